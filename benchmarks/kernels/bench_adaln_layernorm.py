"""Benchmark adaln_layernorm: our kernel vs the PyTorch reference, eager and under torch.compile.

Shapes: D = 2048 (the 2B width), 3,520 tokens per latent frame (704x1280), a few frame counts, B = 1.
GB/s counts the minimum traffic (forward: read x + write out; forward+backward: that plus read grad_out
and x, write grad_x) and is given as a fraction of the copy bandwidth measured in this same process.

    python benchmarks/kernels/bench_adaln_layernorm.py [--frames 1 4] [--dtype float32] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import (  # noqa: E402
    copy_bandwidth, median, print_table, reexec_with_malloc_tuning, time_fn, write_result)
from benchmarks.shapes import DIM, TOKENS_PER_FRAME_720P  # noqa: E402
from cosmos_engine import ops  # noqa: E402
from cosmos_engine.ops import reference  # noqa: E402


def providers(device: torch.device) -> dict:
    backend = "cuda" if device.type == "cuda" else "cpu"

    def ours(x, shift, scale):
        with ops.force_backend(backend):
            return ops.adaln_layernorm(x, shift, scale)

    return {
        "ours": ours,
        "eager": reference.adaln_layernorm,
        "compile": torch.compile(reference.adaln_layernorm, dynamic=False),
    }


def run_case(fn, x, shift, scale, mode: str, device: torch.device) -> list[float]:
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(x, shift, scale)
    else:
        leaves = [t.detach().requires_grad_() for t in (x, shift, scale)]
        grad_out = torch.randn_like(x)

        def step():
            out = fn(*leaves)
            torch.autograd.grad(out, leaves, grad_out)
    return time_fn(step, device, warmup=3, reps=10)


def main() -> None:
    reexec_with_malloc_tuning()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 4], help="latent frames of 3,520 tokens")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    bandwidth = copy_bandwidth(device)
    rows = []
    for frames in args.frames:
        tokens = frames * TOKENS_PER_FRAME_720P
        x = torch.randn(1, tokens, DIM, device=device, dtype=dtype)
        shift = torch.randn(1, frames, DIM, device=device, dtype=dtype)
        scale = torch.randn(1, frames, DIM, device=device, dtype=dtype)
        for mode, passes in (("fwd", 2), ("fwd+bwd", 5)):
            nbytes = passes * x.numel() * x.element_size()
            seconds = {name: median(run_case(fn, x, shift, scale, mode, device)) for name, fn in providers(device).items()}
            gbps = nbytes / seconds["ours"] / 1e9
            rows.append({
                "tokens": tokens, "mode": mode, "ours_ms": seconds["ours"] * 1e3, "eager_ms": seconds["eager"] * 1e3,
                "compile_ms": seconds["compile"] * 1e3, "vs_eager": seconds["eager"] / seconds["ours"],
                "vs_compile": seconds["compile"] / seconds["ours"], "ours_GBps": gbps,
                "frac_copy_bw": gbps * 1e9 / bandwidth,
            })
    path = write_result("adaln_layernorm", device, {
        "op": "adaln_layernorm", "dtype": args.dtype, "dim": DIM, "copy_bandwidth_GBps": bandwidth / 1e9, "rows": rows,
    })
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, {torch.get_num_threads()} threads, {args.dtype}, D={DIM}")
    print_table(rows, ["tokens", "mode", "ours_ms", "eager_ms", "compile_ms", "vs_eager", "vs_compile", "ours_GBps", "frac_copy_bw"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
