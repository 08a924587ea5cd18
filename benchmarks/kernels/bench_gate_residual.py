"""Benchmark gate_residual: our kernel vs the PyTorch reference, eager and under torch.compile.

Minimum traffic: forward reads x and y and writes out (3 passes over [tokens, D]); forward+backward adds
reading grad_out and y and writing grad_y (6; grad_x is grad_out itself). See benchmarks/kernels/fused_op.py.

    python benchmarks/kernels/bench_gate_residual.py [--frames 1 4] [--dtype float32] [--device cpu]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.kernels import fused_op  # noqa: E402
from benchmarks.shapes import DIM  # noqa: E402
from cosmos_engine import ops  # noqa: E402
from cosmos_engine.ops import reference  # noqa: E402


def make_inputs(frames: int, tokens: int, device: torch.device, dtype: torch.dtype):
    x = torch.randn(1, tokens, DIM, device=device, dtype=dtype)
    gate = torch.randn(1, frames, DIM, device=device, dtype=dtype)
    y = torch.randn(1, tokens, DIM, device=device, dtype=dtype)
    return x, gate, y


if __name__ == "__main__":
    fused_op.run("gate_residual", ops.gate_residual, reference.gate_residual, make_inputs,
                 {"fwd": 3, "fwd+bwd": 6}, __doc__.splitlines()[0])
