"""The specification of every fused op, in plain PyTorch.

Tests compare the kernels against these, benchmarks use them as the baseline (eager and under
torch.compile), and the model falls back to them when no kernel applies. Each computes in fp32 inside
(fp64 for fp64 inputs) and returns the input dtype, as the kernels do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def adaln_layernorm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim of x [B, T*N, D], then x * (1 + scale) + shift with
    shift/scale [B, T, D] applied to the N tokens of each frame."""
    batch, tokens, dim = x.shape
    frames = shift.shape[1]
    acc = _acc_dtype(x)
    xhat = F.layer_norm(x.to(acc), (dim,), eps=eps).view(batch, frames, tokens // frames, dim)
    out = xhat * (1 + scale.to(acc)[:, :, None]) + shift.to(acc)[:, :, None]
    return out.view(batch, tokens, dim).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal softmax(q k^T / sqrt(d)) v, no mask. q [B, Lq, H, d], k/v [B, Lk, H, d] -> [B, Lq, H, d]."""
    acc = _acc_dtype(q)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(acc), k.to(acc)) * q.shape[-1] ** -0.5
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v.to(acc))
    return out.to(q.dtype)
