"""Benchmark rms_norm_silu: our kernel vs the PyTorch reference, eager and under torch.compile.

Shapes are the VAE's: channels-last activations [1, C, T, H, W] of the decoder's full-resolution stage (96
channels), its 1/2 stage (192) and the middle blocks (384), at a size that fits a quick CPU run (scaled
down in H, W from 704 x 1280). Minimum traffic: read x once, write out once (2 passes); GB/s is given as a
fraction of this process's measured copy bandwidth (read + write of a 256 MB buffer).

    python benchmarks/kernels/bench_rms_norm_silu.py [--dtype float32] [--device cpu] [--silu 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import copy_bandwidth, median, print_table, time_fn, write_result  # noqa: E402
from cosmos_engine import ops  # noqa: E402
from cosmos_engine.ops import reference  # noqa: E402

# (C, T, H, W): 4-frame chunks of the decoder's stages at 1/4 of the 704 x 1280 side lengths.
SHAPES = [(96, 4, 176, 320), (192, 4, 88, 160), (384, 1, 44, 80)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--silu", type=int, default=1, choices=[0, 1])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    device, dtype, silu = torch.device(args.device), DTYPES[args.dtype], bool(args.silu)
    bandwidth = copy_bandwidth(device)
    compiled_reference = torch.compile(reference.rms_norm_silu, fullgraph=True)
    rows, results = [], []
    with torch.no_grad():
        for c, t, h, w in SHAPES:
            x = torch.randn(1, c, t, h, w, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
            gamma = 1 + 0.1 * torch.randn(c, 1, 1, 1, device=device, dtype=dtype)
            moved = 2 * x.numel() * x.element_size()
            providers = {"ours": lambda: ops.rms_norm_silu(x, gamma, silu),
                         "reference eager": lambda: reference.rms_norm_silu(x, gamma, silu),
                         "reference compiled": lambda: compiled_reference(x, gamma, silu)}
            times = {name: time_fn(fn, device, warmup=2, reps=args.reps) for name, fn in providers.items()}
            seconds = {name: median(ts) for name, ts in times.items()}
            for name, s in seconds.items():
                rows.append({"shape": f"{c}x{t}x{h}x{w}", "provider": name, "ms": s * 1e3,
                             "GB/s": moved / s / 1e9, "of_copy_bw": moved / s / bandwidth,
                             "ours_speedup": s / seconds["ours"]})
            results.append({"shape": [1, c, t, h, w], "bytes_moved": moved, "times_s": times,
                            "speedup_vs_reference_eager": seconds["reference eager"] / seconds["ours"],
                            "speedup_vs_reference_compiled": seconds["reference compiled"] / seconds["ours"]})
    path = write_result("rms_norm_silu", device, {
        "benchmark": "rms_norm_silu (VAE RMS norm + SiLU), channels-last [1, C, T, H, W]; ours vs reference",
        "dtype": args.dtype, "silu": silu, "torch_threads": torch.get_num_threads(),
        "copy_bandwidth_bytes_per_s": bandwidth, "results": results})
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write), {torch.get_num_threads()} threads")
    print_table(rows, ["shape", "provider", "ms", "GB/s", "of_copy_bw", "ours_speedup"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
