"""Video file helpers shared by `prepare`, the decoders and the tests: probe, hash, encode, resize.

* `probe_video` decodes every frame once. Container headers can lie (a truncated file still declares its
  frame count) and an unreadable frame found at training time would cost a run, so `prepare` pays one full
  decode per video and counts the frames it actually got.
* `resize_frames` + `to_unit_range` are the official pixel path (reference/vae_data_io.md §3.3): frames
  scaled to [0, 1], resized with bilinear antialiasing to exactly (height, width) (a plain resize: no crop,
  aspect not kept), back to uint8 by truncation; later, on the training device, `x / 127.5 - 1`. Windows
  travel as uint8 between the two steps: a 93-frame 704x1280 window is 251 MB in uint8, 1 GB in float32.
* Every file is written to a temporary name in its own folder and renamed (`atomic_write`), so a crash never
  leaves a half-written video, manifest or cache entry under the final name.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from cosmos_engine.atomic import atomic_write
from cosmos_engine.errors import DatasetError

# The official dataset falls back to 16 fps when the decoder reports none.
DEFAULT_FPS = 16.0
# Frames resized per interpolate call: bounds the float32 scratch memory of a 93-frame 720p window.
_RESIZE_CHUNK = 4


@dataclass(frozen=True)
class VideoProbe:
    """What one full decode of a video file found."""

    frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration: float  # seconds


def probe_video(path: Path) -> VideoProbe:
    """Open `path`, decode every frame of its first video stream and describe it.

    Raises DatasetError naming the file and the reason: empty file, not a media file FFmpeg can open, a
    still image (whatever its suffix), no video stream (audio only), a decode error, fewer frames than the
    container declares, or no frame.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise DatasetError(f"{path}: cannot be opened as a video ({_ffmpeg_reason(exc)})") from None
    with container:
        if _is_still_image(container):
            raise DatasetError(f"{path}: not a decodable video: FFmpeg reads it as a still image "
                               f"({container.format.long_name}); expected an MP4 video")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise DatasetError(f"{path}: no video stream (contains {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = stream.frames
        frames = 0
        try:
            for _ in container.decode(stream):
                frames += 1
        except av.FFmpegError as exc:
            raise DatasetError(f"{path}: corrupt, decoding stopped after {frames} frames ({_ffmpeg_reason(exc)})") from None
        if frames == 0:
            raise DatasetError(f"{path}: the video stream has no decodable frame")
        if declared and frames < declared:
            raise DatasetError(f"{path}: corrupt or truncated, the container declares {declared} frames but only {frames} decode")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else DEFAULT_FPS
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = frames / fps
        return VideoProbe(frames=frames, fps=fps, width=stream.codec_context.width, height=stream.codec_context.height,
                          codec=stream.codec_context.name, duration=duration)


def _is_still_image(container: av.container.InputContainer) -> bool:
    """FFmpeg's image demuxers (png_pipe, jpeg_pipe, image2, ...) open a picture as a one-frame video."""
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def _ffmpeg_reason(exc: av.FFmpegError) -> str:
    """FFmpeg's own sentence, without the errno and the repeated file name PyAV appends."""
    return exc.strerror or str(exc)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_if_changed(path: Path, data: bytes | str) -> bool:
    """Atomically write `data` unless `path` already holds exactly it. Returns whether it wrote."""
    raw = data.encode() if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == raw:
        return False
    atomic_write(path, raw)
    return True


def encode_video(frames: np.ndarray, fps: float, *, lossless: bool = False, gop: int | None = None,
                 crf: int = 18) -> bytes:
    """H.264 MP4 bytes of `frames` (uint8 [T, H, W, 3] RGB).

    `lossless=True` uses libx264rgb at qp 0 (RGB planes, no chroma subsampling), which decodes back to the
    identical RGB values; the default is ordinary libx264 yuv420p at `crf`, as real footage is stored.
    Encoding is single-threaded and without macroblock-tree rate control, so the same frames always give the
    same bytes (`prepare` relies on that to leave unchanged synthetic clips alone).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    _, height, width, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264rgb" if lossless else "libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        # x264's macroblock-tree rate control gave two different streams for the same frames now and then
        # (seen 25 in 60 at 33x64x112, with threads=1); without it the bytes are stable.
        options = {"qp": "0"} if lossless else {"crf": str(crf), "x264-params": "mbtree=0"}
        options["threads"] = "1"
        if gop is not None:
            options["g"] = str(gop)
        stream.options = options
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def write_video(path: Path, frames: np.ndarray, fps: float, **encode_options) -> None:
    """Encode `frames` (see `encode_video`) and write them atomically to `path`."""
    atomic_write(path, encode_video(frames, fps, **encode_options))


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] (any device) -> uint8 [3, T, height, width], the official way.

    Per frame: scale to [0, 1] in float32, bilinear antialiased resize to exactly (height, width), back to
    uint8 by truncation (reference/vae_data_io.md §3.3). Works on a few frames at a time, so a 93-frame
    720p window needs tens of MB of float scratch, not gigabytes. A frame already at the size is copied.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    num = frames.shape[0]
    if frames.shape[1:3] == (height, width):
        return frames.permute(3, 0, 1, 2).contiguous()
    out = torch.empty((3, num, height, width), dtype=torch.uint8, device=frames.device)
    for lo in range(0, num, _RESIZE_CHUNK):
        chunk = frames[lo:lo + _RESIZE_CHUNK].permute(0, 3, 1, 2).float().div_(255.0)  # [t, 3, H, W]
        chunk = F.interpolate(chunk, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        out[:, lo:lo + _RESIZE_CHUNK] = chunk.mul_(255.0).clamp_(0, 255).to(torch.uint8).permute(1, 0, 2, 3)
    return out


def to_unit_range(video: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (`x / 127.5 - 1`, as the official model does on the GPU)."""
    return video.float().div_(127.5).sub_(1.0)
