"""GPU video decoding with NVIDIA DALI (NVDEC), the same contract as `PyAVDecoder`, frames on the GPU.

The file's bytes go to `fn.decoders.video` on the "mixed" backend (FFmpeg demuxes on the CPU, NVDEC
decodes on the GPU), which seeks to the key frame before `start_frame` and returns `sequence_length`
consecutive frames. The frames stay on the GPU (the dataset resizes them there) and never cross the PCIe
bus or a DataLoader worker pipe: the loader runs this decoder in the main process (CUDA cannot be used in
forked workers).

`backend="cpu"` runs the same pipeline on DALI's CPU decoder, which reads VP8, VP9 and MJPEG but not
H.264 or MPEG-4 (what training videos are), so it is no CPU path for users; it lets the tests run this
module's pipeline, its inputs and its frame bookkeeping on a machine without a GPU.

`nvidia-dali` is optional and imported only when this decoder is built. Status: the "cpu" backend is
tested on VP9 clips; the "mixed" (GPU) backend has not been run yet: its test is marked `cuda`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cosmos_engine.errors import DatasetError, UserError

log = logging.getLogger(__name__)


def dali_available() -> bool:
    """True when a GPU is visible and `nvidia.dali` imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class DALIDecoder:
    """Decodes frames with NVDEC into CUDA tensors ("mixed"), or with DALI's CPU decoder ("cpu"), one video
    per call (batch size 1 pipeline)."""

    name = "dali"

    def __init__(self, device_index: int | None = None, num_threads: int = 2,
                 backend: Literal["mixed", "cpu"] = "mixed") -> None:
        try:
            import nvidia.dali
            from nvidia.dali import fn, pipeline_def, types
            from nvidia.dali.plugin.pytorch import feed_ndarray
        except ImportError as exc:
            raise UserError(f'decoder "dali" needs the nvidia-dali package (pip install nvidia-dali-cuda130): {exc}') from None
        if backend not in ("mixed", "cpu"):
            raise ValueError(f'backend must be "mixed" or "cpu", got {backend!r}')
        if backend == "mixed" and not torch.cuda.is_available():
            raise UserError('decoder "dali" needs a CUDA GPU; use decoder = "pyav" on this machine')
        if not hasattr(fn, "decoders") or not hasattr(fn.decoders, "video"):
            raise UserError("this nvidia-dali has no fn.decoders.video; install a release that has it (2.x)")
        if backend == "mixed":
            self.device = torch.device("cuda", torch.cuda.current_device() if device_index is None else device_index)
        else:
            self.device = torch.device("cpu")
        self._feed_ndarray = feed_ndarray
        # Part of the latent cache key: NVDEC and DALI's CPU decoder, or two releases, need not agree bit for bit.
        self.identity = f"dali {nvidia.dali.__version__} {backend}"

        @pipeline_def(batch_size=1, num_threads=num_threads, device_id=self.device.index, prefetch_queue_depth=1)
        def window_pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, device="cpu")
            start = fn.external_source(name="start", dtype=types.INT32, ndim=0, device="cpu")
            length = fn.external_source(name="length", dtype=types.INT32, ndim=0, device="cpu")
            return fn.decoders.video(encoded, device=backend, start_frame=start, sequence_length=length, pad_mode="none")

        self._pipe = window_pipeline()
        self._pipe.build()

    def read_frames(self, path: Path, indices: Sequence[int]) -> torch.Tensor:
        """uint8 [len(indices), H, W, 3] RGB frames on this decoder's device, in the order of `indices`."""
        path = Path(path)
        if len(indices) == 0:
            raise ValueError("indices must not be empty")
        lo, hi = min(indices), max(indices)
        if lo < 0:
            raise DatasetError(f"{path}: negative frame index {lo}")
        self._pipe.feed_input("encoded", [np.fromfile(path, dtype=np.uint8)])
        self._pipe.feed_input("start", [np.array(lo, dtype=np.int32)])
        self._pipe.feed_input("length", [np.array(hi - lo + 1, dtype=np.int32)])
        try:
            (batch,) = self._pipe.run()
        except RuntimeError as exc:
            raise DatasetError(f"{path}: DALI could not decode frames {lo}..{hi} ({_reason(exc)})") from None
        dali_tensor = batch.as_tensor()  # [1, F, H, W, 3] on the decoder's device
        span = torch.empty(dali_tensor.shape(), dtype=torch.uint8, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        self._feed_ndarray(dali_tensor, span, cuda_stream=stream)
        span = span[0]
        if span.shape[0] != hi - lo + 1:
            raise DatasetError(f"{path}: DALI returned {span.shape[0]} frames for {lo}..{hi} (the video is shorter)")
        return span[torch.as_tensor(indices, device=self.device) - lo]


def _reason(exc: RuntimeError) -> str:
    """The line of a DALI pipeline error that says what went wrong (after its "encountered:" header)."""
    text = str(exc)
    tail = text.split("encountered:", 1)[1] if "encountered:" in text else text
    lines = [line.strip() for line in tail.splitlines()
             if line.strip() and "no longer valid" not in line and not line.strip().startswith(("C++ context", "Critical error"))]
    return lines[0] if lines else text.strip()
