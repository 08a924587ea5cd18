"""Benchmark rmsnorm_rope: our kernel vs the PyTorch reference, eager and under torch.compile.

x is [1, tokens, 16 heads, 128] (the 2B model's q or k), the RoPE table [tokens, 128] in fp32. Minimum
traffic, counting only x-sized tensors: forward reads x and writes out (2 passes over [tokens, D]);
forward+backward adds reading grad_out and x and writing grad_x (5). See benchmarks/kernels/fused_op.py.

    python benchmarks/kernels/bench_rmsnorm_rope.py [--frames 1 4] [--dtype float32] [--device cpu]
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

HEAD_DIM = 128


def make_inputs(frames: int, tokens: int, device: torch.device, dtype: torch.dtype):
    x = torch.randn(1, tokens, DIM // HEAD_DIM, HEAD_DIM, device=device, dtype=dtype)
    weight = 1 + 0.1 * torch.randn(HEAD_DIM, device=device, dtype=dtype)
    angles = torch.rand(tokens, HEAD_DIM // 2, device=device) * 50
    angles = torch.cat([angles, angles], dim=-1)
    return x, weight, angles.cos(), angles.sin()


if __name__ == "__main__":
    fused_op.run("rmsnorm_rope", ops.rmsnorm_rope, reference.rmsnorm_rope, make_inputs,
                 {"fwd": 2, "fwd+bwd": 5}, __doc__.splitlines()[0], differentiable=2)
