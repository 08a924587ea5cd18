"""Benchmark the Wan2.1 VAE: encode and decode time and peak memory, untiled and tiled.

The timed VAE has the real 2B structure and width (dim 96, 126.9 M parameters) with random weights (speed
and memory do not depend on the values). A 720p frame is far too slow for dim 96 on a small CPU, so the
memory-scaling point (1 x 704 x 1280, untiled vs 512-px tiles) uses the same structure at dim 16: it
shows how peak memory follows the frame or the tile size.

Each point runs in its own child process. Memory is what the call adds: on the CPU the peak resident set
size during the call (VmHWM, reset through /proc/self/clear_refs right before it) minus the resident size
before it (model and input already there); on a GPU `torch.cuda.max_memory_allocated` minus the allocation
before the call. The children use glibc's default allocator settings (not benchmarks.common.MALLOC_ENV):
an allocator that keeps freed blocks would hide freed memory from the resident size, and the
convolutions dominate the time anyway.

Every point runs once per `--backends` entry, in the same run: "cpu"/"cuda" is the kernel path (compiled
ops, channels-last activations), "reference" today's path (`ops.force_backend("reference")`: PyTorch ops,
NCDHW); the summary gives reference time / kernel time per op and for encode + decode.

The default points (17x64x64 and 9x256x448, dim 96, fp32, untiled) take ~5 minutes per backend on a
2-core CPU; bf16 convolutions are very slow on CPUs without bf16 units, so the bf16 and memory points are
opt-in (`--bf16-points 1x64x64 --memory-points 1x704x1280 --tiled both`). On a GPU pass e.g.
`--device cuda --backends cuda reference --dtype bfloat16 --points 93x704x1280 --tiled both --tile-size 512`.

    python benchmarks/e2e/bench_vae.py [--points 17x64x64 9x256x448] [--tiled no] [--backends cpu reference]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import median, print_table, write_result  # noqa: E402
from cosmos_engine import ops  # noqa: E402
from cosmos_engine.models.wan_vae import VAEConfig, WanVAE  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**10
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_point(op: str, frames: int, height: int, width: int, dim: int, dtype: str, tiled: bool, tile_size: int,
              tile_overlap: int, device: str, reps: int, backend: str) -> dict:
    """One measurement (in the child process): build the VAE, make the input, time `reps` calls."""
    with ops.force_backend(backend):
        return _run_point(op, frames, height, width, dim, dtype, tiled, tile_size, tile_overlap, device, reps)


def _run_point(op: str, frames: int, height: int, width: int, dim: int, dtype: str, tiled: bool, tile_size: int,
               tile_overlap: int, device: str, reps: int) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig(dim=dim)).to(dev, DTYPES[dtype]).eval()
    if op == "encode":
        x = torch.rand(1, 3, frames, height, width, device=dev) * 2 - 1
        fn = vae.encode
    else:
        x = torch.randn(1, 16, 1 + (frames - 1) // 4, height // 8, width // 8, device=dev)
        fn = vae.decode
    kwargs = dict(tiled=tiled, tile_size=tile_size, tile_overlap=tile_overlap)
    # one untimed call on a small input first: thread pools and oneDNN start-up are not the VAE's time
    small = x[:, :, :1, :64, :64] if op == "encode" else x[:, :, :1, :8, :8]
    fn(small.contiguous(), tiled=False)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev) / 2**20
    else:
        before = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from the current size
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x, **kwargs)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = _status_mb("VmHWM")
    return {"times_s": times, "peak_mb": peak, "before_mb": before, "peak_minus_before_mb": peak - before}


def parse_point(text: str) -> tuple[int, int, int]:
    frames, height, width = (int(v) for v in text.lower().split("x"))
    if (frames - 1) % 4 or height % 8 or width % 8:
        raise argparse.ArgumentTypeError(f"point {text!r}: frames must be 1 + 4k and height/width multiples of 8")
    return frames, height, width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=parse_point, nargs="*", default=[(17, 64, 64), (9, 256, 448)],
                        help="FRAMESxHEIGHTxWIDTH of the pixel video, dim-96 VAE in --dtype")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of --points")
    parser.add_argument("--tiled", default="no", choices=["no", "yes", "both"])
    parser.add_argument("--tile-size", type=int, default=256, help="pixels")
    parser.add_argument("--tile-overlap", type=int, default=200, help="pixels (200 = exact for the 2B structure)")
    parser.add_argument("--bf16-points", type=parse_point, nargs="*", default=[],
                        help="dim-96 points run with bf16 weights and activations (untiled)")
    parser.add_argument("--memory-points", type=parse_point, nargs="*", default=[],
                        help="points run untiled and tiled with a narrow VAE (--memory-dim) to show how peak "
                             "memory scales with the frame size at a size a CPU can afford")
    parser.add_argument("--memory-dim", type=int, default=16)
    parser.add_argument("--memory-tile-size", type=int, default=512, help="pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", nargs="+", default=None, choices=["cpu", "cuda", "reference"],
                        help="default: the device's kernels and the reference")
    parser.add_argument("--name", default="vae", help="result file name: <date>_<device>_<name>.json")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_point(**json.loads(args.child))))
        return

    backends = args.backends or [torch.device(args.device).type, "reference"]
    tilings = {"no": [False], "yes": [True], "both": [False, True]}[args.tiled]
    plan = []  # (point, dim, dtype, tile size or None)
    for point in args.points:
        # tiling a frame no larger than one tile is the untiled computation; skip those points
        plan += [(point, 96, args.dtype, args.tile_size if tiled else None) for tiled in tilings
                 if not tiled or max(point[1:]) > args.tile_size]
    plan += [(point, 96, "bfloat16", None) for point in args.bf16_points]
    plan += [(point, args.memory_dim, "float32", tile) for point in args.memory_points
             for tile in (None, args.memory_tile_size)]
    rows, results = [], []
    for ((frames, height, width), dim, dtype, tile_size), backend, op in (
            (p, b, o) for p in plan for o in ("encode", "decode") for b in backends):
        spec = dict(op=op, frames=frames, height=height, width=width, dim=dim, dtype=dtype,
                    tiled=tile_size is not None, tile_size=tile_size or args.tile_size,
                    tile_overlap=args.tile_overlap, device=args.device, reps=args.reps, backend=backend)
        child = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True,
                               capture_output=True, text=True)
        result = {**spec, **json.loads(child.stdout.strip().splitlines()[-1])}
        results.append(result)
        seconds = median(result["times_s"])
        rows.append({"op": op, "backend": backend, "video": f"{frames}x{height}x{width}", "dim": dim, "dtype": dtype,
                     "tiled": f"{tile_size}/{args.tile_overlap}" if tile_size else "no",
                     "seconds": seconds, "pixel_frames/s": frames * height * width / seconds,
                     "peak_mb": result["peak_mb"], "peak_minus_before_mb": result["peak_minus_before_mb"]})
        print(f"{op} [{backend}] {rows[-1]['video']} dim={dim} {dtype} tiled={rows[-1]['tiled']}: {seconds:.2f} s, "
              f"+{result['peak_minus_before_mb']:.0f} MB", flush=True)
    speedups = _speedups(rows, backends)
    path = write_result(args.name, torch.device(args.device), {
        "benchmark": "Wan2.1 VAE encode/decode (2B structure, random weights), one child process per point; "
                     "backend 'reference' = today's path, the device backend = compiled ops + channels-last",
        "speedups_reference_over_kernels": speedups,
        "memory": "CPU: VmHWM during the call (reset before it) minus VmRSS before it, default glibc malloc; "
                  "GPU: max_memory_allocated minus memory_allocated before the call",
        "results": results})
    print_table(rows, ["op", "backend", "video", "dim", "dtype", "tiled", "seconds", "pixel_frames/s", "peak_mb",
                       "peak_minus_before_mb"])
    if speedups:
        print_table(speedups, ["video", "dim", "dtype", "tiled", "encode", "decode", "encode+decode"])
    print(f"wrote {path}")


def _speedups(rows: list[dict], backends: list[str]) -> list[dict]:
    """reference seconds / kernel seconds per point, for encode, decode and their sum."""
    kernel = next((b for b in backends if b != "reference"), None)
    if kernel is None or "reference" not in backends:
        return []
    seconds = {(r["video"], r["dim"], r["dtype"], r["tiled"], r["op"], r["backend"]): r["seconds"] for r in rows}
    out = []
    for video, dim, dtype, tiled in dict.fromkeys((r["video"], r["dim"], r["dtype"], r["tiled"]) for r in rows):
        t = {(op, b): seconds[(video, dim, dtype, tiled, op, b)] for op in ("encode", "decode") for b in (kernel, "reference")}
        out.append({"video": video, "dim": dim, "dtype": dtype, "tiled": tiled,
                    "encode": t["encode", "reference"] / t["encode", kernel],
                    "decode": t["decode", "reference"] / t["decode", kernel],
                    "encode+decode": (t["encode", "reference"] + t["decode", "reference"])
                    / (t["encode", kernel] + t["decode", kernel])})
    return out


if __name__ == "__main__":
    main()
