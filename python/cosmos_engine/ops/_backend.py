"""Which implementation an op runs: the CUDA kernel, the CPU kernel, or the PyTorch reference.

By default the device of the inputs decides (CUDA kernel for CUDA tensors when _C has CUDA kernels that
this GPU can run, CPU kernel for CPU tensors when _C is loaded, the reference otherwise). `force_backend(...)` overrides that
for every op inside a `with` block, so a test can run the same model on both paths and compare.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

import torch

from cosmos_engine.ops import _library

log = logging.getLogger(__name__)

Backend = Literal["reference", "cpu", "cuda"]
BACKENDS: tuple[Backend, ...] = ("reference", "cpu", "cuda")

# A plain module global (not a ContextVar) so torch.compile can read it while tracing.
_forced: Backend | None = None
_warned_reference = False
# Per CUDA device index: whether _C holds a cubin or PTX that it runs (decided, and warned about, once).
_cuda_device_ok: dict[int, bool] = {}


@contextlib.contextmanager
def force_backend(backend: Backend) -> Iterator[None]:
    """Run every op in the block with `backend` ("reference", "cpu" or "cuda")."""
    if backend not in BACKENDS:
        raise ValueError(f"force_backend: backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "reference" and not _library.is_loaded():
        raise RuntimeError(f"force_backend({backend!r}): the compiled library is not loaded ({_library.build_info()['why']})")
    if backend == "cuda" and not _library.has_cuda_kernels():
        raise RuntimeError("force_backend('cuda'): this build has no CUDA kernels "
                           f"({_library.build_info()['cuda_reason']})")
    global _forced
    previous, _forced = _forced, backend
    try:
        yield
    finally:
        _forced = previous


def forced_backend() -> Backend | None:
    return _forced


def _cuda_kernels_run_on(device: torch.device) -> bool:
    """Whether the GPU `device` can run our CUDA kernels; warns once per device when it cannot."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    ok = _cuda_device_ok.get(index)
    if ok is None:
        capability = torch.cuda.get_device_capability(index)
        ok = _cuda_device_ok[index] = _library.cuda_kernel_image(capability) is not None
        if not ok:
            log.warning("%s (cuda:%d, compute capability %d.%d) can run none of cosmos_engine's CUDA kernels, "
                        "which were built for %s; every op uses the PyTorch reference on it. Rebuild with "
                        "TORCH_CUDA_ARCH_LIST=%d.%d for this GPU", torch.cuda.get_device_name(index), index,
                        *capability, _library.cuda_archs_summary(), *capability)
    return ok


def select(device: torch.device) -> Backend:
    """The backend an op should use for tensors on `device`."""
    forced = _forced
    if forced is not None:
        if forced != "reference" and forced != device.type:
            raise RuntimeError(f"backend {forced!r} is forced but the inputs are on {device}")
        if forced == "cuda" and not _cuda_kernels_run_on(device):
            raise RuntimeError(f"force_backend('cuda'): {torch.cuda.get_device_name(device)} cannot run the CUDA "
                               f"kernels of this build ({_library.cuda_archs_summary()})")
        return forced
    if device.type == "cuda" and _library.has_cuda_kernels():
        return "cuda" if _cuda_kernels_run_on(device) else "reference"  # the latter warned once per device
    if device.type == "cpu" and _library.is_loaded():
        return "cpu"
    global _warned_reference
    if not _warned_reference:
        _warned_reference = True
        log.warning("no compiled kernel for %s tensors (%s); using the PyTorch reference ops",
                    device.type, _library.build_info().get("why") or _library.build_info().get("cuda_reason"))
    return "reference"
