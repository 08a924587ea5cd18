"""Benchmark the data path: decode + resize a 720p clip to training tensors, and a cached sample.

1. Frames per second to turn a window of a generated 1280x720 H.264 clip (yuv420p, crf 18, 16 fps) into
   the training tensor float32 [3, 93, 704, 1280] in [-1, 1]:
   * "pyav": our CPU path (`PyAVDecoder.read_frames`: seek + threaded FFmpeg decode; `resize_frames`;
     `to_unit_range`, which training does on the GPU but is timed here on the CPU for both providers);
   * "decord": the official path (decord `VideoReader(num_threads=2).get_batch`, then per frame /255,
     bilinear antialiased resize, truncation to uint8, /127.5 - 1), when decord is installed.
   Each is also timed decode-only (uint8 frames, no resize), and ours up to the uint8 window, which is
   what a DataLoader worker does. Starts cycle over 0, 3 and 7.
2. Seconds per training sample with the latent cache: reading one cached latent of the real size
   (16 x 24 x 88 x 160 bf16, 10.8 MB) from a safetensors file (page cache warm) and stacking it into a
   batch as the DataLoader's collate does (safetensors maps the file lazily; the stack makes every byte
   be read), against the online path's data cost
   (decode + resize from 1.) which must then still run the VAE encoder; that encoder's cost is not measured
   here (it needs the real VAE and a GPU) and is reported as null.

    python benchmarks/e2e/bench_data.py [--frames 100] [--window 93]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import median, print_table, time_fn, write_result  # noqa: E402
from cosmos_engine.data.cache import LatentCache, LatentKey  # noqa: E402
from cosmos_engine.data.decode_pyav import PyAVDecoder  # noqa: E402
from cosmos_engine.data.synthetic import render_clip  # noqa: E402
from cosmos_engine.data.video_io import resize_frames, to_unit_range, write_video  # noqa: E402

HEIGHT, WIDTH = 704, 1280
STARTS = (0, 3, 7)


def decord_official(path: Path, start: int, num_frames: int, resize: bool) -> torch.Tensor:
    """The official VideoDataset's pixel path (reference/vae_data_io.md §3.3), decord included."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=2)
    frames = torch.from_numpy(reader.get_batch(list(range(start, start + num_frames))).asnumpy())
    if not resize:
        return frames
    video = frames.permute(0, 3, 1, 2).float() / 255.0
    out = [F.interpolate(f[None], size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False, antialias=True)[0]
           for f in video]
    video = torch.clamp(torch.stack(out) * 255.0, 0, 255).to(torch.uint8)
    return video.permute(1, 0, 2, 3).float() / 127.5 - 1.0


def cycling(fn):
    state = {"i": 0}

    def step():
        start = STARTS[state["i"] % len(STARTS)]
        state["i"] += 1
        fn(start)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="frames in the generated 720p clip")
    parser.add_argument("--window", type=int, default=93, help="frames per training window")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    cpu = torch.device("cpu")

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip720p.mp4"
        write_video(clip, render_clip(0, 0, args.frames, 720, 1280), fps=16)
        pyav = PyAVDecoder()
        paths = {
            "pyav": {
                "decode": lambda s: pyav.read_frames(clip, range(s, s + args.window)),
                "decode+resize to uint8 (worker)": lambda s: resize_frames(
                    pyav.read_frames(clip, range(s, s + args.window)), HEIGHT, WIDTH),
                "decode+resize": lambda s: to_unit_range(resize_frames(
                    pyav.read_frames(clip, range(s, s + args.window)), HEIGHT, WIDTH)),
            },
        }
        if importlib.util.find_spec("decord") is not None:
            paths["decord"] = {
                "decode": lambda s: decord_official(clip, s, args.window, resize=False),
                "decode+resize": lambda s: decord_official(clip, s, args.window, resize=True),
            }
        rows = []
        for provider, modes in paths.items():
            for mode, fn in modes.items():
                times = time_fn(cycling(fn), cpu, warmup=1, reps=args.reps)
                rows.append({"case": f"{provider} {mode}", "provider": provider, "mode": mode,
                             "seconds_per_window": median(times), "fps": args.window / median(times), "times": times})

        cache = LatentCache(Path(tmp))
        key = LatentKey("0" * 64, 0, args.window, HEIGHT, WIDTH, "bench")
        latent_frames = 1 + (args.window - 1) // 4
        cache.store(key, torch.randn(16, latent_frames, HEIGHT // 8, WIDTH // 8).to(torch.bfloat16))
        times = time_fn(lambda: torch.stack([cache.load(key)]), cpu, warmup=2, reps=args.reps)
        online = next(r for r in rows if r["case"] == "pyav decode+resize")["seconds_per_window"]
        samples = [
            {"case": "cache on: read latent", "seconds_per_sample": median(times), "times": times},
            {"case": "cache off: decode+resize (pyav), VAE not included", "seconds_per_sample": online,
             "vae_encode_seconds": None},
        ]

    print(f"decode + resize to [3, {args.window}, {HEIGHT}, {WIDTH}] float32 from a {args.frames}-frame 1280x720 "
          f"H.264 clip, {torch.get_num_threads()} CPU threads")
    print_table(rows, ["case", "seconds_per_window", "fps"])
    print()
    print_table(samples, ["case", "seconds_per_sample"])
    path = write_result("data", cpu, {
        "load_average_1_5_15min": list(os.getloadavg()),
        "clip": {"width": 1280, "height": 720, "frames": args.frames, "codec": "h264 yuv420p crf 18", "fps": 16},
        "window": {"frames": args.window, "height": HEIGHT, "width": WIDTH, "starts": list(STARTS)},
        "decode": rows, "per_sample": samples,
        "notes": "decord is the official decoder (num_threads=2); the VAE encode cost of the online path is "
                 "not measured here (null): it needs the real VAE on a GPU. A load average above the thread "
                 "count means other processes shared the CPU during the run.",
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
