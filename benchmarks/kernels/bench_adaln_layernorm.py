"""Benchmark adaln_layernorm: our kernel vs the PyTorch reference, eager and under torch.compile.

Minimum traffic: forward reads x and writes out (2 passes over [tokens, D]); forward+backward adds reading
grad_out and x and writing grad_x (5). See benchmarks/kernels/fused_op.py for the rest.

    python benchmarks/kernels/bench_adaln_layernorm.py [--frames 1 4] [--dtype float32] [--device cpu]
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
    shift = torch.randn(1, frames, DIM, device=device, dtype=dtype)
    scale = torch.randn(1, frames, DIM, device=device, dtype=dtype)
    return x, shift, scale


if __name__ == "__main__":
    fused_op.run("adaln_layernorm", ops.adaln_layernorm, reference.adaln_layernorm, make_inputs,
                 {"fwd": 2, "fwd+bwd": 5}, __doc__.splitlines()[0])
