"""Benchmark the data path: decode + resize a 720p clip to training tensors, and a cached sample.

1. Frames per second to turn a window of a generated 1280x720 H.264 clip (yuv420p, crf 18, 16 fps) into
   the training tensor float32 [3, 93, 704, 1280] in [-1, 1]:
   * "pyav": our CPU path (`PyAVDecoder.read_frames`: seek + threaded FFmpeg decode; `resize_frames`;
     `to_unit_range`, which training does on the GPU but is timed here on the CPU for both providers);
   * "decord": the official path (decord `VideoReader(num_threads=2).get_batch`, then per frame /255,
     bilinear antialiased resize, truncation to uint8, /127.5 - 1), when decord is installed.
   Each is also timed decode-only (uint8 frames, no resize), and ours up to the uint8 window, which is
   what a DataLoader worker does. Starts cycle over 0, 3 and 7.
2. Seconds per training sample, cache on vs off. On: reading one cached latent of the real size
   (16 x 24 x 88 x 160 bf16, 10.8 MB) from a safetensors file (page cache warm) and stacking it into a
   batch as the DataLoader's collate does (safetensors maps the file lazily; the stack makes every byte
   be read). Off (the official behaviour): the decode + resize of 1., then the Wan2.1 VAE encoder (the 2B
   model's architecture, seeded random weights: its cost does not depend on their values; fp32 on the CPU,
   bf16 on a GPU as the official pipeline) on the window. The encoder runs frame 0 alone and then one
   4-frame chunk at a time with the same work per chunk, so its time is a + b * chunks: it is timed at
   `--vae-frames` (1 + 4k frames each) and a least-squares line through those points gives the window's
   time when the window itself is not among them (on a 2-core CPU one 93-frame 720p encode takes about an
   hour). The result marks which figure is measured and which is the line's, with the fit's worst residual.
   The text encoder is not counted on either side: this engine encodes each caption once per run.

    python benchmarks/e2e/bench_data.py [--frames 100] [--window 93] [--vae-frames 1 5 9]
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
from cosmos_engine.models.flavors import vae_config  # noqa: E402
from cosmos_engine.models.wan_vae import WanVAE  # noqa: E402

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


def time_vae_encode(frame_counts: list[int], window: int, device: torch.device, reps: int) -> dict:
    """Seconds of one Wan2.1 (2B architecture) encode at 704x1280 for each count in `frame_counts`, and for
    `window` frames: measured when it is one of them, else from the least-squares line over chunk counts."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = WanVAE(vae_config("2b")).to(device=device, dtype=dtype).eval().requires_grad_(False)
    points = []
    for frames in frame_counts:
        video = torch.rand(1, 3, frames, HEIGHT, WIDTH, device=device, dtype=dtype) * 2 - 1
        with torch.inference_mode():
            times = time_fn(lambda video=video: vae.encode(video), device, warmup=0 if device.type == "cpu" else 1, reps=reps,
                            min_cpu_reps=1)
        points.append({"frames": frames, "chunks": (frames - 1) // 4, "seconds": median(times), "times": times})
        print(f"  VAE encode {frames} x {HEIGHT} x {WIDTH}: {median(times):.2f} s", flush=True)
    measured = {p["frames"]: p["seconds"] for p in points}
    result = {"dtype": str(dtype).removeprefix("torch."), "size": [HEIGHT, WIDTH], "points": points}
    if window in measured:
        result.update(window_seconds=measured[window], window_source="measured")
        return result
    chunks = torch.tensor([float(p["chunks"]) for p in points], dtype=torch.float64)
    seconds = torch.tensor([p["seconds"] for p in points], dtype=torch.float64)
    design = torch.stack([torch.ones_like(chunks), chunks], dim=1)
    first_frame, per_chunk = torch.linalg.lstsq(design, seconds[:, None]).solution[:, 0].tolist()
    residual = ((design @ torch.tensor([first_frame, per_chunk], dtype=torch.float64) - seconds) / seconds).abs().max()
    result.update(window_seconds=first_frame + per_chunk * ((window - 1) // 4), window_source="least-squares line",
                  fit={"first_frame_s": first_frame, "per_chunk_s": per_chunk, "max_relative_residual": residual.item()})
    return result


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
    parser.add_argument("--vae-frames", type=int, nargs="+", default=None,
                        help="frame counts (1 + 4k) at which to time the VAE encode (default: 1 5 9 on the CPU, "
                             "1 5 9 and the window on a GPU)")
    parser.add_argument("--vae-reps", type=int, default=1, help="timed repetitions per VAE point (median)")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    gpu = torch.device("cuda") if torch.cuda.is_available() else None
    vae_frames = args.vae_frames or ([1, 5, 9] + ([args.window] if gpu else []))
    if args.frames < args.window + max(STARTS):
        parser.error(f"--frames {args.frames}: the clip needs at least --window + {max(STARTS)} frames")
    if any(f < 1 or (f - 1) % 4 for f in vae_frames) or (args.window not in vae_frames and len(set(vae_frames)) < 2):
        parser.error(f"--vae-frames {vae_frames}: give counts of 1 + 4k frames: the window itself, or at least two "
                     "distinct counts to fit a line through")

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
        key = LatentKey("0" * 64, 0, args.window, HEIGHT, WIDTH, "bench", PyAVDecoder.identity)
        latent_frames = 1 + (args.window - 1) // 4
        cache.store(key, torch.randn(16, latent_frames, HEIGHT // 8, WIDTH // 8).to(torch.bfloat16))
        times = time_fn(lambda: torch.stack([cache.load(key)]), cpu, warmup=2, reps=args.reps)
        online = next(r for r in rows if r["case"] == "pyav decode+resize")["seconds_per_window"]
    vae_device = gpu or cpu
    vae = time_vae_encode(vae_frames, args.window, vae_device, args.vae_reps)
    samples = [
        {"case": "cache on: read latent", "seconds_per_sample": median(times), "times": times},
        {"case": f"cache off: decode+resize (pyav) + VAE encode ({vae['window_source']})",
         "seconds_per_sample": online + vae["window_seconds"], "decode_resize_seconds": online,
         "vae_encode_seconds": vae["window_seconds"], "vae_device": vae_device.type},
    ]
    speedup = samples[1]["seconds_per_sample"] / samples[0]["seconds_per_sample"]

    print(f"decode + resize to [3, {args.window}, {HEIGHT}, {WIDTH}] float32 from a {args.frames}-frame 1280x720 "
          f"H.264 clip, {torch.get_num_threads()} CPU threads")
    print_table(rows, ["case", "seconds_per_window", "fps"])
    print()
    print_table(samples, ["case", "seconds_per_sample"])
    print(f"cache on vs off: {speedup:.0f}x less data time per sample")
    path = write_result("data", cpu, {
        "load_average_1_5_15min": list(os.getloadavg()),
        "clip": {"width": 1280, "height": 720, "frames": args.frames, "codec": "h264 yuv420p crf 18", "fps": 16},
        "window": {"frames": args.window, "height": HEIGHT, "width": WIDTH, "starts": list(STARTS)},
        "decode": rows, "vae_encode": vae, "per_sample": samples, "cache_speedup_per_sample": speedup,
        "notes": "decord is the official decoder (num_threads=2). The cache-off VAE time is measured at "
                 "vae_encode.points and, when window_source says so, read off the least-squares line through "
                 "them (time = first_frame_s + per_chunk_s * chunks). The text encoder is excluded on both "
                 "sides. A load average above the thread count means other processes shared the CPU.",
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
