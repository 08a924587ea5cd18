"""`rms_norm_silu`: the Wan2.1 VAE's channel RMS norm with gamma, optionally followed by SiLU.

    out = x / max(||x||_2 over the channels, 1e-12) * sqrt(C) * gamma    (official `RMS_norm`)
    out = silu(out)                                                      when silu=True

for x [B, C, ...] with the channels in dim 1 (videos [B, C, T, H, W], per-frame images [B*T, C, H, W]).
Every residual block of the VAE runs it twice (with SiLU), the heads once (with SiLU) and the attention
blocks once (without). The compiled op `cosmos_engine::rms_norm_silu_fwd` wants the channels innermost
in memory (torch.channels_last_3d / channels_last), reads such an x in place and returns a channels-last
output; any other layout is converted once. fp32 inside (fp64 for fp64), one rounding at the end.

Forward only: the VAE is frozen and runs under no_grad, so the op has no backward and asking for one is
an error (the reference, `reference.rms_norm_silu`, is plain PyTorch and differentiable).
"""

from __future__ import annotations

import torch

from cosmos_engine.ops import _backend, _library, reference

_OP = "cosmos_engine::rms_norm_silu_fwd"


def check_inputs(x: torch.Tensor, gamma: torch.Tensor) -> None:
    """Validate shapes, dtypes and devices; errors name the argument."""
    if x.dim() < 2:
        raise ValueError(f"rms_norm_silu: 'x' must be [B, C, ...] with the channels in dim 1, got shape {tuple(x.shape)}")
    if x.dtype not in reference.FLOAT_DTYPES:
        raise TypeError(f"rms_norm_silu: 'x' must be float32, bfloat16, float16 or float64, got {x.dtype}")
    channels = x.shape[1]
    if gamma.dim() < 1 or gamma.shape[0] != channels or gamma.numel() != channels:
        raise ValueError(f"rms_norm_silu: 'gamma' must hold one value per channel ([C] or [C, 1, ...] with "
                         f"C={channels} for 'x' of shape {tuple(x.shape)}), got shape {tuple(gamma.shape)}")
    if gamma.dtype not in reference.FLOAT_DTYPES:
        raise TypeError(f"rms_norm_silu: 'gamma' must be a floating-point tensor, got {gamma.dtype}")
    if gamma.device != x.device:
        raise ValueError(f"rms_norm_silu: 'gamma' is on {gamma.device} but 'x' is on {x.device}")


def _register() -> None:
    """The fake and the (refusing) autograd formula of the compiled op (only when _C is loaded)."""

    @torch.library.register_fake(_OP)
    def _fwd_fake(x, gamma, silu):
        torch._check(x.dim() >= 2, lambda: "rms_norm_silu: 'x' must be [B, C, ...]")
        torch._check(gamma.numel() == x.shape[1], lambda: "rms_norm_silu: 'gamma' must hold C values")
        # The kernel writes rows of C channels: the output is channels-last whatever x's layout.
        rows = torch.empty(x.movedim(1, -1).shape, dtype=x.dtype, device=x.device)
        return rows.movedim(-1, 1)

    def _setup_context(ctx, inputs, output):
        pass

    def _backward(ctx, grad_out):
        raise RuntimeError("rms_norm_silu: the compiled op is forward only (the VAE is frozen and runs under "
                           "no_grad), so it has no backward; differentiate reference.rms_norm_silu instead, "
                           "e.g. inside ops.force_backend('reference')")

    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


if _library.is_loaded():
    _register()


def rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, silu: bool = True) -> torch.Tensor:
    """The VAE's RMS norm of x [B, C, ...] over dim 1 with gamma ([C] or the module's [C, 1, 1(, 1)]),
    then SiLU when `silu`. Output in x's dtype; channels-last in memory on the kernel path (the
    reference keeps x's layout). A gamma of another dtype than x and not float32 is converted to x's."""
    check_inputs(x, gamma)
    if gamma.dtype not in (x.dtype, torch.float32):
        gamma = gamma.to(x.dtype)
    if _backend.select(x.device) == "reference":
        return reference.rms_norm_silu(x, gamma, silu)
    return torch.ops.cosmos_engine.rms_norm_silu_fwd(x, gamma, bool(silu))
