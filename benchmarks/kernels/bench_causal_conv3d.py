"""Benchmark causal_conv3d on the CPU: our op vs the reference (cat + F.pad + conv3d) eager and compiled.

Shapes: the Wan2.1 VAE's causal convs at the 2B structure's channel counts (96, 192, 384) for a video of
--size x --size pixels, each at the resolution its level runs at (the encoder halves it per level), one
chunk of --frames frames with its cache (2 frames for the 3x3x3 convs, 1 for the stride-2 temporal
downsample): the residual 3x3x3 convs of each level, a widening 3x3x3 with its 1x1x1 shortcut, the
decoder's (3,1,1) temporal upsample (C -> 2C) and the encoder's (3,1,1) stride-(2,1,1) downsample.
Our op gets channels-last inputs (the layout the VAE keeps); the reference gets channels-first ones, as
today's VAE runs it. GFLOP/s counts 2 * outputs * C_in * kT * kH * kW, and is also reported as a fraction
of the fp32 `torch.mm` 2048 x 2048 rate measured in this same process. Providers are timed in interleaved
rounds so that the load of other processes on this shared machine skews them alike.

    python benchmarks/kernels/bench_causal_conv3d.py [--size 64] [--frames 4] [--dtypes float32] [--reps 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import median, print_table, reexec_with_malloc_tuning, time_fn, write_result  # noqa: E402
from cosmos_engine import ops  # noqa: E402
from cosmos_engine.ops import reference  # noqa: E402

CL = torch.channels_last_3d


def vae_convs(size: int) -> list[tuple]:
    """(name, C_in, C_out, kernel, padding, stride, cache frames, H, W) at the 2B structure's widths."""
    convs = []
    for level, (dim, scale) in enumerate(((96, 1), (192, 2), (384, 4))):
        side = size // scale
        convs.append((f"res3x3x3.L{level}", dim, dim, (3, 3, 3), (2, 1, 1), (1, 1, 1), 2, side, side))
    side = size // 2
    convs += [
        ("widen3x3x3.96-192", 96, 192, (3, 3, 3), (2, 1, 1), (1, 1, 1), 2, side, side),
        ("shortcut1x1x1.96-192", 96, 192, (1, 1, 1), (0, 0, 0), (1, 1, 1), 0, side, side),
        ("time_up.384", 384, 768, (3, 1, 1), (2, 0, 0), (1, 1, 1), 2, size // 4, size // 4),
        ("time_down.192", 192, 192, (3, 1, 1), (1, 0, 0), (2, 1, 1), 1, side, side),
    ]
    return convs


def gemm_rate() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / median(time_fn(lambda: torch.mm(a, b), torch.device("cpu"), warmup=3, reps=10))


def interleaved_times(calls: dict, reps: int) -> dict:
    """Median seconds per call of each provider, timed in rounds (one call of each per round, after one
    warm-up round), so a change in the machine's load hits every provider alike."""
    samples = {name: [] for name in calls}
    for round_ in range(reps + 1):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if round_:
                samples[name].append(time.perf_counter() - t0)
    return {name: median(ts) for name, ts in samples.items()}


def main() -> None:
    reexec_with_malloc_tuning()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="video height = width in pixels")
    parser.add_argument("--frames", type=int, default=4, help="frames per chunk")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cpu")
    load_before = os.getloadavg()
    gemm = gemm_rate()
    compiled_reference = torch.compile(reference.causal_conv3d, dynamic=False)

    def ours(x, weight, bias, cache, padding, stride):
        with ops.force_backend("cpu"):
            return ops.causal_conv3d(x, weight, bias, cache, padding, stride)

    providers = {"ours": ours, "reference": reference.causal_conv3d, "compiled": compiled_reference}
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for name, cin, cout, kernel, padding, stride, cache_frames, height, width in vae_convs(args.size):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(1, cin, args.frames, height, width, generator=gen).to(dtype)
            cache = torch.randn(1, cin, cache_frames, height, width, generator=gen).to(dtype) if cache_frames else None
            weight = (torch.randn(cout, cin, *kernel, generator=gen) / (cin * kernel[0] * kernel[1] * kernel[2]) ** 0.5
                      ).to(dtype)
            bias = torch.randn(cout, generator=gen).to(dtype)
            x_cl = x.contiguous(memory_format=CL)
            cache_cl = None if cache is None else cache.contiguous(memory_format=CL)
            with torch.no_grad():
                out = reference.causal_conv3d(x, weight, bias, cache, padding, stride)
            flop = 2 * out.numel() * cin * kernel[0] * kernel[1] * kernel[2]
            row = {"dtype": dtype_name, "conv": name, "C_in": cin, "C_out": cout, "HxW": f"{height}x{width}",
                   "T_out": out.shape[2], "GFLOP": flop / 1e9}
            calls = {}
            for pname, fn in providers.items():
                channels_last = pname == "ours"
                inputs = (x_cl if channels_last else x, weight, bias, cache_cl if channels_last else cache, padding, stride)
                calls[pname] = functools.partial(fn, *inputs)
                with torch.no_grad():
                    torch.testing.assert_close(calls[pname]().float(), out.float(), atol=1e-2, rtol=1e-2)  # sanity
            with torch.no_grad():
                times = interleaved_times(calls, args.reps)
            for pname, seconds in times.items():
                row[f"{pname}_ms"] = seconds * 1e3
                row[f"{pname}_GFLOPs"] = flop / seconds / 1e9
            row["vs_reference"] = row["reference_ms"] / row["ours_ms"]
            row["vs_compiled"] = row["compiled_ms"] / row["ours_ms"]
            row["ours_frac_gemm"] = row["ours_GFLOPs"] * 1e9 / gemm
            rows.append(row)
            print(row, flush=True)
    load = {"before": load_before, "after": os.getloadavg()}
    path = write_result("causal_conv3d", device, {
        "op": "causal_conv3d", "size": args.size, "frames": args.frames, "reps": args.reps,
        "gemm_2048_fp32_GFLOPs": gemm / 1e9, "flop_convention": "2 * outputs * C_in * kT * kH * kW",
        "inputs": "ours channels_last_3d, reference/compiled channels-first (today's VAE)",
        "timing": "interleaved rounds, one call per provider per round, median of reps rounds after one warm-up",
        "load_average_1_5_15min": load, "rows": rows,
    })
    print(f"{torch.get_num_threads()} threads, fp32 torch.mm 2048^2: {gemm / 1e9:.1f} GFLOP/s; load average "
          f"before {load_before[0]:.1f}, after {load['after'][0]:.1f} (other processes skew timings)")
    print_table(rows, ["dtype", "conv", "C_in", "C_out", "HxW", "T_out", "ours_ms", "reference_ms", "compiled_ms",
                       "vs_reference", "vs_compiled", "ours_GFLOPs", "ours_frac_gemm"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
