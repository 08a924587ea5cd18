"""The specification of every fused op, in plain PyTorch.

Tests compare the kernels against these, benchmarks use them as the baseline (eager and under
torch.compile), and the model falls back to them when no kernel applies. Each computes in fp32 inside
(fp64 for fp64 inputs) and returns the input dtype, as the kernels do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# The activation dtypes every op accepts.
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def acc_dtype(x: torch.Tensor | torch.dtype) -> torch.dtype:
    """The accumulation dtype for inputs like x (a tensor or a dtype): float64 for float64, else float32.
    The one definition: ops, the DiT's fp32 islands, the VAE's blending sums and the sampler all use it."""
    dtype = x if isinstance(x, torch.dtype) else x.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def adaln_layernorm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim of x [B, T*N, D], then x * (1 + scale) + shift with
    shift/scale [B, T, D] applied to the N tokens of each frame."""
    batch, tokens, dim = x.shape
    frames = shift.shape[1]
    acc = acc_dtype(x)
    xhat = F.layer_norm(x.to(acc), (dim,), eps=eps).view(batch, frames, tokens // frames, dim)
    out = xhat * (1 + scale.to(acc)[:, :, None]) + shift.to(acc)[:, :, None]
    return out.view(batch, tokens, dim).to(x.dtype)


def gate_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y for x, y [B, T*N, D] and a per-frame gate [B, T, D] applied to the N tokens of each frame."""
    batch, tokens, dim = x.shape
    frames = gate.shape[1]
    acc = acc_dtype(x)
    out = (x.to(acc).view(batch, frames, tokens // frames, dim)
           + gate.to(acc)[:, :, None] * y.to(acc).view(batch, frames, tokens // frames, dim))
    return out.view(batch, tokens, dim).to(x.dtype)


def rmsnorm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor | None = None,
                 sin: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Per-head RMSNorm of x [B, L, H, d] (x / sqrt(mean(x^2) + eps) * weight), then, with cos/sin [L, d],
    rotate-half RoPE: n * cos + cat(-n2, n1) * sin for the halves n1, n2 of each head vector."""
    acc = acc_dtype(x)
    xf = x.to(acc)
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(acc)
    if cos is not None:
        n1, n2 = n.chunk(2, dim=-1)
        n = n * cos.to(acc)[:, None] + torch.cat((-n2, n1), dim=-1) * sin.to(acc)[:, None]
    return n.to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal softmax(q k^T / sqrt(d)) v, no mask. q [B, Lq, H, d], k/v [B, Lk, H, d] -> [B, Lq, H, d]."""
    acc = acc_dtype(q)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(acc), k.to(acc)) * q.shape[-1] ** -0.5
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v.to(acc))
    return out.to(q.dtype)


def rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, silu: bool = True) -> torch.Tensor:
    """The Wan2.1 VAE's `RMS_norm` of x [B, C, ...] over the channels in dim 1, as the official writes it:
    F.normalize(x, dim=1) (x / max(||x||_2, 1e-12)) * sqrt(C) * gamma, gamma with C values; then SiLU
    when `silu`. Keeps x's memory layout."""
    acc = acc_dtype(x)
    channels = x.shape[1]
    y = F.normalize(x.to(acc), dim=1) * channels**0.5 * gamma.to(acc).reshape(channels, *(1,) * (x.dim() - 2))
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


def causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cache_x: torch.Tensor | None,
                  padding: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1)) -> torch.Tensor:
    """3-D convolution of x [B, C_in, T, H, W] that is causal in time (the Wan2.1 VAE's CausalConv3d).

    `padding = (past, height, width)`: `past` frames of context go in front of x and none behind it;
    height and width get symmetric zero padding. The context is `cache_x` [B, C_in, n, H, W] (the last
    n <= past input frames of the previous temporal chunk), completed with zero frames in front.
    Padding is materialised with F.pad and the conv runs unpadded, as the official module does (that
    is also faster on the CPU than the conv's own padding)."""
    past, pad_h, pad_w = padding
    if cache_x is not None:
        x_full = torch.cat([cache_x.to(x.dtype), x], dim=2)
        past -= cache_x.shape[2]
    else:
        x_full = x
    if past or pad_h or pad_w:
        x_full = F.pad(x_full, (pad_w, pad_w, pad_h, pad_h, past, 0))
    acc = acc_dtype(x)
    out = F.conv3d(x_full.to(acc), weight.to(acc), None if bias is None else bias.to(acc), stride)
    return out.to(x.dtype)
