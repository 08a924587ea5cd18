"""`rmsnorm_rope`: the attention's per-head q/k RMSNorm and the rotate-half 3D RoPE, fused.

The compiled op `cosmos_engine::rmsnorm_rope_fwd` returns (out, rstd); its backward is the op
`rmsnorm_rope_bwd`. Without cos/sin it is the RMSNorm alone (the cross-attention keys). This file gives
both ops their fake (shape) functions, wires the autograd formula, and exposes the public function.
"""

from __future__ import annotations

import torch

from cosmos_engine.ops import _backend, _library, reference

EPS = 1e-6



def check_inputs(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> None:
    """Validate shapes, dtypes and devices. Errors name the argument."""
    if x.dim() != 4:
        raise ValueError(f"rmsnorm_rope: 'x' must be [B, L, heads, head_dim], got shape {tuple(x.shape)}")
    if x.dtype not in reference.FLOAT_DTYPES:
        raise TypeError(f"rmsnorm_rope: 'x' must be float32, bfloat16, float16 or float64, got {x.dtype}")
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"rmsnorm_rope: the head dimension of 'x' must be even, got {dim}")
    if weight.shape != (dim,):
        raise ValueError(f"rmsnorm_rope: 'weight' has shape {tuple(weight.shape)}, expected [{dim}]")
    if (cos is None) != (sin is None):
        raise ValueError("rmsnorm_rope: give both 'cos' and 'sin' (RoPE) or neither")
    for name, t in (("weight", weight), ("cos", cos), ("sin", sin)):
        if t is not None and t.device != x.device:
            raise ValueError(f"rmsnorm_rope: '{name}' is on {t.device} but 'x' is on {x.device}")
    if cos is not None:
        for name, t in (("cos", cos), ("sin", sin)):
            if t.shape != (x.shape[1], dim):
                raise ValueError(f"rmsnorm_rope: '{name}' has shape {tuple(t.shape)}, expected [L={x.shape[1]}, "
                                 f"head_dim={dim}] to match 'x' of shape {tuple(x.shape)}")


def _register() -> None:
    """Fakes and autograd for the compiled ops (only when _C is loaded)."""

    @torch.library.register_fake("cosmos_engine::rmsnorm_rope_fwd")
    def _fwd_fake(x, weight, cos, sin, eps):
        torch._check(x.dim() == 4 and weight.dim() == 1, lambda: "rmsnorm_rope: x must be 4-D and weight 1-D")
        return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[:3], dtype=reference.acc_dtype(x))

    @torch.library.register_fake("cosmos_engine::rmsnorm_rope_bwd")
    def _bwd_fake(grad_out, x, weight, cos, sin, rstd):
        torch._check(grad_out.shape == x.shape, lambda: "rmsnorm_rope: grad_out and x shapes differ")
        return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight)

    def _setup_context(ctx, inputs, output):
        x, weight, cos, sin, _eps = inputs
        _out, rstd = output
        ctx.save_for_backward(x, weight, cos, sin, rstd)
        ctx.mark_non_differentiable(rstd)

    def _backward(ctx, grad_out, _grad_rstd):
        x, weight, cos, sin, rstd = ctx.saved_tensors
        grad_x, grad_weight = torch.ops.cosmos_engine.rmsnorm_rope_bwd(grad_out, x, weight, cos, sin, rstd)
        return grad_x, grad_weight, None, None, None

    torch.library.register_autograd("cosmos_engine::rmsnorm_rope_fwd", _backward, setup_context=_setup_context)


if _library.is_loaded():
    _register()


def rmsnorm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                 eps: float = EPS) -> torch.Tensor:
    """RMSNorm of each head vector of x [B, L, heads, d] with `weight` [d], then (given cos/sin [L, d])
    rotate-half RoPE. fp32 inside (fp64 for fp64), output in x's dtype. A weight of another dtype than x and
    not float32 is converted to x's; the table to the accumulation dtype. Differentiable in x and weight."""
    check_inputs(x, weight, cos, sin)
    if weight.dtype not in (x.dtype, torch.float32):
        weight = weight.to(x.dtype)
    if cos is not None:
        cos, sin = cos.to(reference.acc_dtype(x)), sin.to(reference.acc_dtype(x))
    if _backend.select(x.device) == "reference":
        return reference.rmsnorm_rope(x, weight, cos, sin, eps)
    out, _rstd = torch.ops.cosmos_engine.rmsnorm_rope_fwd(x, weight, cos, sin, eps)
    return out
