"""`gate_residual`: x + gate * y with a per-frame gate, the residual update of every DiT sub-block.

The compiled op `cosmos_engine::gate_residual_fwd` computes in fp32 (fp64 for fp64) and rounds once; its
backward op `gate_residual_bwd` gives the gradients of y and of the gate (the gradient of x is the
incoming gradient itself). This file gives both ops their fake (shape) functions, wires the autograd
formula, and exposes the public function the model calls.
"""

from __future__ import annotations

import torch

from cosmos_engine.ops import _backend, _library, reference



def check_inputs(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> int:
    """Validate shapes, dtypes and devices; return tokens_per_frame. Errors name the argument."""
    for name, t in (("x", x), ("y", y)):
        if t.dim() != 3:
            raise ValueError(f"gate_residual: '{name}' must be [B, T*H*W, D], got shape {tuple(t.shape)}")
        if t.dtype not in reference.FLOAT_DTYPES:
            raise TypeError(f"gate_residual: '{name}' must be float32, bfloat16, float16 or float64, got {t.dtype}")
    if y.shape != x.shape:
        raise ValueError(f"gate_residual: 'y' has shape {tuple(y.shape)} but 'x' has {tuple(x.shape)}")
    if gate.dim() != 3 or gate.shape[0] != x.shape[0] or gate.shape[2] != x.shape[2]:
        raise ValueError(f"gate_residual: 'gate' has shape {tuple(gate.shape)}, expected [B={x.shape[0]}, T, "
                         f"D={x.shape[2]}] to match 'x' of shape {tuple(x.shape)}")
    if gate.dtype not in reference.FLOAT_DTYPES:
        raise TypeError(f"gate_residual: 'gate' must be a floating-point tensor, got {gate.dtype}")
    for name, t in (("gate", gate), ("y", y)):
        if t.device != x.device:
            raise ValueError(f"gate_residual: '{name}' is on {t.device} but 'x' is on {x.device}")
    frames = gate.shape[1]
    if frames == 0 or x.shape[1] % frames != 0:
        raise ValueError(f"gate_residual: 'x' has {x.shape[1]} tokens, which is not a whole number of tokens "
                         f"per frame for the {frames} frames of 'gate'")
    return x.shape[1] // frames


def _register() -> None:
    """Fakes and autograd for the compiled ops (only when _C is loaded)."""

    @torch.library.register_fake("cosmos_engine::gate_residual_fwd")
    def _fwd_fake(x, gate, y, tokens_per_frame):
        torch._check(x.dim() == 3 and gate.dim() == 3 and y.shape == x.shape, lambda: "gate_residual: bad shapes")
        torch._check(gate.shape[1] * tokens_per_frame == x.shape[1], lambda: "gate_residual: frames * tokens_per_frame != tokens")
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)

    @torch.library.register_fake("cosmos_engine::gate_residual_bwd")
    def _bwd_fake(grad_out, gate, y, tokens_per_frame):
        torch._check(grad_out.shape == y.shape, lambda: "gate_residual: grad_out and y shapes differ")
        torch._check(gate.shape[1] * tokens_per_frame == y.shape[1], lambda: "gate_residual: frames * tokens_per_frame != tokens")
        return (torch.empty(y.shape, dtype=y.dtype, device=y.device),
                torch.empty(gate.shape, dtype=gate.dtype, device=gate.device))

    def _setup_context(ctx, inputs, output):
        _x, gate, y, tokens_per_frame = inputs
        ctx.save_for_backward(gate, y)
        ctx.tokens_per_frame = tokens_per_frame

    def _backward(ctx, grad_out):
        gate, y = ctx.saved_tensors
        grad_y, grad_gate = torch.ops.cosmos_engine.gate_residual_bwd(grad_out, gate, y, ctx.tokens_per_frame)
        return grad_out, grad_gate, grad_y, None

    torch.library.register_autograd("cosmos_engine::gate_residual_fwd", _backward, setup_context=_setup_context)


if _library.is_loaded():
    _register()


def gate_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y for x, y [B, T*H*W, D] and a per-frame gate [B, T, D] (T = 1 gates all tokens alike).

    x and y of different dtypes (fp32-master training: an fp32 residual stream, bf16 matmul outputs) are
    both taken to the wider one, exactly, as PyTorch's type promotion would; a gate of another dtype than
    the result and not float32 is converted to the result's dtype. fp32 inside, one rounding at the end.
    Differentiable in x, gate and y."""
    tokens_per_frame = check_inputs(x, gate, y)
    dtype = torch.promote_types(x.dtype, y.dtype)
    x, y = x.to(dtype), y.to(dtype)
    if gate.dtype not in (dtype, torch.float32):
        gate = gate.to(dtype)
    if _backend.select(x.device) == "reference":
        return reference.gate_residual(x, gate, y)
    return torch.ops.cosmos_engine.gate_residual_fwd(x, gate, y, tokens_per_frame)
