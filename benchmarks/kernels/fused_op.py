"""What every fused-op benchmark does: our kernel vs the PyTorch reference, eager and under torch.compile,
forward and forward+backward, at 720p frame sizes (D = 2048, 3,520 tokens per latent frame, B = 1).

GB/s counts the minimum traffic of each mode (given by the op's benchmark) and is reported as a fraction
of the copy bandwidth measured in this same process. Results go to benchmarks/results/ (common.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from benchmarks.common import copy_bandwidth, median, print_table, reexec_with_malloc_tuning, time_fn, write_result
from benchmarks.shapes import DIM, TOKENS_PER_FRAME_720P
from cosmos_engine import ops

MODES = ("fwd", "fwd+bwd")


def _time_mode(fn: Callable, inputs: tuple[torch.Tensor, ...], mode: str, device: torch.device,
               differentiable: int) -> float:
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(*inputs)
    else:
        leaves = [t.detach().requires_grad_() for t in inputs[:differentiable]]
        rest = inputs[differentiable:]
        grad_out = torch.randn_like(fn(*inputs))

        def step():
            torch.autograd.grad(fn(*leaves, *rest), leaves, grad_out)
    return median(time_fn(step, device, warmup=3, reps=10))


def run(name: str, op: Callable, reference_fn: Callable,
        make_inputs: Callable[[int, int, torch.device, torch.dtype], tuple[torch.Tensor, ...]],
        traffic_passes: dict[str, int], description: str, differentiable: int | None = None) -> None:
    """`make_inputs(frames, tokens, device, dtype)` gives the op's arguments, of which the first
    `differentiable` (default all) get gradients; `traffic_passes[mode]` is the number of [tokens, D]
    tensors the mode must read or write at least."""
    reexec_with_malloc_tuning()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 4], help="latent frames of 3,520 tokens")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    backend = "cuda" if device.type == "cuda" else "cpu"

    def ours(*inputs):
        with ops.force_backend(backend):
            return op(*inputs)

    providers = {"ours": ours, "eager": reference_fn, "compile": torch.compile(reference_fn, dynamic=False)}
    bandwidth = copy_bandwidth(device)
    rows = []
    for frames in args.frames:
        tokens = frames * TOKENS_PER_FRAME_720P
        inputs = make_inputs(frames, tokens, device, dtype)
        for mode in MODES:
            nbytes = traffic_passes[mode] * tokens * DIM * dtype.itemsize
            seconds = {p: _time_mode(fn, inputs, mode, device, differentiable or len(inputs))
                       for p, fn in providers.items()}
            gbps = nbytes / seconds["ours"] / 1e9
            rows.append({
                "tokens": tokens, "mode": mode, "ours_ms": seconds["ours"] * 1e3, "eager_ms": seconds["eager"] * 1e3,
                "compile_ms": seconds["compile"] * 1e3, "vs_eager": seconds["eager"] / seconds["ours"],
                "vs_compile": seconds["compile"] / seconds["ours"], "ours_GBps": gbps,
                "frac_copy_bw": gbps * 1e9 / bandwidth,
            })
    path = write_result(name, device, {
        "op": name, "dtype": args.dtype, "dim": DIM, "copy_bandwidth_GBps": bandwidth / 1e9,
        "traffic_passes": traffic_passes, "rows": rows,
    })
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, {torch.get_num_threads()} threads, {args.dtype}, D={DIM}")
    print_table(rows, ["tokens", "mode", "ours_ms", "eager_ms", "compile_ms", "vs_eager", "vs_compile", "ours_GBps", "frac_copy_bw"])
    print(f"wrote {path}")
