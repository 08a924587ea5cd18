"""CPU video decoding with PyAV (FFmpeg), frame-exact by presentation timestamp.

Frame i of a video is the i-th frame in presentation order. To read a window without decoding from the
start, the decoder first demuxes the file once (packets only, no decoding: cheap) and sorts the packet
timestamps into a frame-index table. A read then seeks to the key frame at or before the first wanted
frame and decodes forward, keeping exactly the frames whose timestamps are wanted; B-frames and variable
frame rates are handled because frames are matched by timestamp, never by counting from the seek point.
If a file has no usable timestamps, or a seek lands after the wanted frame, the read falls back to
decoding from the first frame and counting.

FFmpeg decodes with its own threads (`thread_type = "AUTO"`: frame and slice threading).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch

from cosmos_engine.errors import DatasetError


class PyAVDecoder:
    """Decodes frames on the CPU. Safe to use from DataLoader workers (each process has its own tables)."""

    name = "pyav"
    # Part of the latent cache key: another PyAV or FFmpeg build may decode (or colour-convert) differently.
    identity = f"pyav {av.__version__} libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}"
    device = torch.device("cpu")

    def __init__(self) -> None:
        # path -> ((size, mtime_ns), sorted presentation timestamps, or None when unusable)
        self._tables: dict[str, tuple[tuple[int, int], list[int] | None]] = {}

    def read_frames(self, path: Path, indices: Sequence[int]) -> torch.Tensor:
        """uint8 [len(indices), H, W, 3] RGB frames, in the order of `indices` (repeats allowed)."""
        path = Path(path)
        if len(indices) == 0:
            raise ValueError("indices must not be empty")
        table = self._table(path)
        wanted = sorted(set(int(i) for i in indices))
        total = len(table) if table is not None else None
        if wanted[0] < 0 or (total is not None and wanted[-1] >= total):
            raise DatasetError(f"{path}: frame indices {wanted[0]}..{wanted[-1]} are outside its {total} frames")
        try:
            frames = self._decode_by_pts(path, table, wanted) if table is not None else None
            if frames is None:
                frames = self._decode_by_count(path, wanted)
        except av.FFmpegError as exc:
            raise DatasetError(f"{path}: decoding frames {wanted[0]}..{wanted[-1]} failed ({exc})") from None
        return torch.from_numpy(np.stack([frames[i] for i in indices]))

    def _table(self, path: Path) -> list[int] | None:
        stat = os.stat(path)
        stamp = (stat.st_size, stat.st_mtime_ns)
        cached = self._tables.get(str(path))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                pts = [p.pts for p in container.demux(stream) if p.size and not p.is_discard]
        except (av.FFmpegError, IndexError) as exc:
            raise DatasetError(f"{path}: cannot be read as a video ({exc})") from None
        table = sorted(pts) if pts and None not in pts and len(set(pts)) == len(pts) else None
        self._tables[str(path)] = (stamp, table)
        return table

    def _decode_by_pts(self, path: Path, table: list[int], wanted: list[int]) -> dict[int, np.ndarray] | None:
        index_of = {table[i]: i for i in wanted}
        last_pts = table[wanted[-1]]
        out: dict[int, np.ndarray] = {}
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            container.seek(table[wanted[0]], stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    return None
                if not out and frame.pts > table[wanted[0]]:
                    return None  # the seek overshot: this file's index is not trustworthy
                i = index_of.get(frame.pts)
                if i is not None:
                    out[i] = frame.to_ndarray(format="rgb24")
                if frame.pts >= last_pts:
                    break
        return out if len(out) == len(wanted) else None

    def _decode_by_count(self, path: Path, wanted: list[int]) -> dict[int, np.ndarray]:
        want = set(wanted)
        out: dict[int, np.ndarray] = {}
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in want:
                    out[i] = frame.to_ndarray(format="rgb24")
                if i >= wanted[-1]:
                    break
        if len(out) != len(want):
            raise DatasetError(f"{path}: has only {len(out)} of the frames {wanted[0]}..{wanted[-1]} asked for")
        return out
