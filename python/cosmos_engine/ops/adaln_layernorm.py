"""`adaln_layernorm`: LayerNorm (no affine) + per-frame AdaLN modulation, the DiT's pre-norm.

The compiled op `cosmos_engine::adaln_layernorm_fwd` returns (out, mean, rstd); its backward is the op
`adaln_layernorm_bwd`. This file gives both ops their fake (shape) functions and wires the autograd
formula, and exposes the public function the model calls.
"""

from __future__ import annotations

import torch

from cosmos_engine.ops import _backend, _library, reference

EPS = 1e-6


def check_inputs(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> int:
    """Validate shapes, dtypes and devices; return tokens_per_frame. Errors name the argument."""
    if x.dim() != 3:
        raise ValueError(f"adaln_layernorm: 'x' must be [B, T*H*W, D], got shape {tuple(x.shape)}")
    for name, t in (("shift", shift), ("scale", scale)):
        if t.dim() != 3:
            raise ValueError(f"adaln_layernorm: '{name}' must be [B, T, D], got shape {tuple(t.shape)}")
        if t.shape != shift.shape:
            raise ValueError(f"adaln_layernorm: 'scale' has shape {tuple(scale.shape)} but 'shift' has {tuple(shift.shape)}")
        if t.shape[0] != x.shape[0] or t.shape[2] != x.shape[2]:
            raise ValueError(f"adaln_layernorm: '{name}' has shape {tuple(t.shape)}, expected [B={x.shape[0]}, T, "
                             f"D={x.shape[2]}] to match 'x' of shape {tuple(x.shape)}")
        if t.device != x.device:
            raise ValueError(f"adaln_layernorm: '{name}' is on {t.device} but 'x' is on {x.device}")
        if t.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"adaln_layernorm: '{name}' must have the dtype of 'x' ({x.dtype}) or float32, got {t.dtype}")
    if x.dtype not in reference.FLOAT_DTYPES:
        raise TypeError(f"adaln_layernorm: 'x' must be float32, bfloat16, float16 or float64, got {x.dtype}")
    if shift.dtype != scale.dtype:
        raise TypeError(f"adaln_layernorm: 'shift' is {shift.dtype} but 'scale' is {scale.dtype}")
    frames = shift.shape[1]
    if frames == 0 or x.shape[1] % frames != 0:
        raise ValueError(f"adaln_layernorm: 'x' has {x.shape[1]} tokens, which is not a whole number of tokens "
                         f"per frame for the {frames} frames of 'shift'/'scale'")
    return x.shape[1] // frames



def _register() -> None:
    """Fakes and autograd for the compiled ops (only when _C is loaded)."""

    @torch.library.register_fake("cosmos_engine::adaln_layernorm_fwd")
    def _fwd_fake(x, shift, scale, tokens_per_frame, eps):
        torch._check(x.dim() == 3 and shift.dim() == 3 and scale.dim() == 3, lambda: "adaln_layernorm: x, shift and scale must be 3-D")
        torch._check(shift.shape[1] * tokens_per_frame == x.shape[1], lambda: "adaln_layernorm: frames * tokens_per_frame != tokens")
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        mean = x.new_empty(x.shape[:2], dtype=reference.acc_dtype(x))
        return out, mean, torch.empty_like(mean)

    @torch.library.register_fake("cosmos_engine::adaln_layernorm_bwd")
    def _bwd_fake(grad_out, x, scale, mean, rstd, tokens_per_frame):
        torch._check(grad_out.shape == x.shape, lambda: "adaln_layernorm: grad_out and x shapes differ")
        torch._check(scale.shape[1] * tokens_per_frame == x.shape[1], lambda: "adaln_layernorm: frames * tokens_per_frame != tokens")
        return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
                torch.empty(scale.shape, dtype=scale.dtype, device=scale.device),
                torch.empty(scale.shape, dtype=scale.dtype, device=scale.device))

    def _setup_context(ctx, inputs, output):
        x, _shift, scale, tokens_per_frame, _eps = inputs
        _out, mean, rstd = output
        ctx.save_for_backward(x, scale, mean, rstd)
        ctx.tokens_per_frame = tokens_per_frame
        ctx.mark_non_differentiable(mean, rstd)

    def _backward(ctx, grad_out, _grad_mean, _grad_rstd):
        x, scale, mean, rstd = ctx.saved_tensors
        grad_x, grad_shift, grad_scale = torch.ops.cosmos_engine.adaln_layernorm_bwd(
            grad_out.contiguous(), x, scale, mean, rstd, ctx.tokens_per_frame)
        return grad_x, grad_shift, grad_scale, None, None

    torch.library.register_autograd("cosmos_engine::adaln_layernorm_fwd", _backward, setup_context=_setup_context)


if _library.is_loaded():
    _register()


def adaln_layernorm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """LayerNorm (no affine, `eps`) of each token of x [B, T*H*W, D], then x * (1 + scale) + shift with
    shift/scale [B, T, D] (one row per latent frame; T = 1 broadcasts over all tokens). fp32 inside,
    output in x's dtype. Differentiable in x, shift and scale."""
    tokens_per_frame = check_inputs(x, shift, scale)
    if _backend.select(x.device) == "reference":
        return reference.adaln_layernorm(x, shift, scale, eps)
    out, _mean, _rstd = torch.ops.cosmos_engine.adaln_layernorm_fwd(x, shift, scale, tokens_per_frame, eps)
    return out
