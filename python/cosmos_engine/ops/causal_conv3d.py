"""`causal_conv3d`: the Wan2.1 VAE's 3-D convolution, causal in time, with the previous chunk as context.

The VAE encodes and decodes a video in temporal chunks. Every 3-D convolution with a temporal kernel
of 3 needs the last input frames of the previous chunk (or zeros at the start of the video) in front of
the current chunk, and nothing after it. This op takes that context explicitly:

    causal_conv3d(x, weight, bias, cache_x, padding=(past, height, width), stride=(1, 1, 1))

* x        [B, C_in, T, H, W]
* weight   [C_out, C_in, kT, kH, kW], bias [C_out] or None
* cache_x  [B, C_in, n, H, W] with n <= past, or None: the last input frames of the previous chunk
* padding  `past` frames of context in front of x (cache_x, completed with zero frames in front of it),
           none behind; `height` and `width` zero rows/columns on both sides
* stride   (sT, sH, sW)
* returns  [B, C_out, (past + T - kT) // sT + 1, (H + 2*height - kH) // sH + 1, (W + 2*width - kW) // sW + 1]

The planned compiled op has the same arguments (`causal_conv3d_fwd(Tensor x, Tensor weight, Tensor? bias,
Tensor? cache_x, int[3] padding, int[3] stride) -> Tensor`, see DESIGN.md §6). Until it is registered, every
backend runs the PyTorch reference (`reference.causal_conv3d`), which is what the model's parity tests pin.
"""

from __future__ import annotations

import functools
import logging

import torch

from cosmos_engine.ops import _backend, reference

log = logging.getLogger(__name__)

_OP = "cosmos_engine::causal_conv3d_fwd"


def check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cache_x: torch.Tensor | None,
                 padding: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
    """Validate shapes, dtypes, devices and the padding/stride triples; errors name the argument."""
    if x.dim() != 5:
        raise ValueError(f"causal_conv3d: 'x' must be [B, C, T, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in reference.FLOAT_DTYPES:
        raise TypeError(f"causal_conv3d: 'x' must be a floating-point tensor, got {x.dtype}")
    if weight.dim() != 5 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"causal_conv3d: 'weight' must be [C_out, C_in={x.shape[1]}, kT, kH, kW] for 'x' of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"causal_conv3d: 'bias' must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("cache_x", cache_x)):
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"causal_conv3d: '{name}' is on {t.device} but 'x' is on {x.device}")
        if t.dtype != x.dtype:
            raise TypeError(f"causal_conv3d: '{name}' is {t.dtype} but 'x' is {x.dtype}")
    if len(padding) != 3 or any(int(p) < 0 for p in padding):
        raise ValueError(f"causal_conv3d: 'padding' must be (past, height, width) >= 0, got {tuple(padding)}")
    if len(stride) != 3 or any(int(s) < 1 for s in stride):
        raise ValueError(f"causal_conv3d: 'stride' must be three integers >= 1, got {tuple(stride)}")
    past = padding[0]
    if cache_x is not None:
        if cache_x.dim() != 5 or cache_x.shape[:2] != x.shape[:2] or cache_x.shape[3:] != x.shape[3:]:
            raise ValueError(f"causal_conv3d: 'cache_x' must be [B, C, n, H, W] matching 'x' {tuple(x.shape)} "
                             f"outside the time dim, got {tuple(cache_x.shape)}")
        if cache_x.shape[2] > past:
            raise ValueError(f"causal_conv3d: 'cache_x' holds {cache_x.shape[2]} frames but 'padding' allows only "
                             f"{past} frames of past context")
    if past + x.shape[2] < weight.shape[2]:
        raise ValueError(f"causal_conv3d: {x.shape[2]} frames of 'x' plus {past} of past context are fewer than "
                         f"the temporal kernel size {weight.shape[2]}")


@functools.cache
def _has_kernel(backend: str) -> bool:
    """Whether the compiled op exists with a kernel for `backend` ("cpu" or "cuda")."""
    if not torch._C._dispatch_has_kernel(_OP):
        log.info("causal_conv3d: no compiled kernel in this build; using the PyTorch reference")
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(_OP, backend.upper())


def causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  cache_x: torch.Tensor | None = None, padding: tuple[int, int, int] = (0, 0, 0),
                  stride: tuple[int, int, int] = (1, 1, 1)) -> torch.Tensor:
    """Causal-in-time 3-D convolution of x [B, C_in, T, H, W] (see the module docstring for the contract).

    `padding = (past, height, width)`: `past` frames in front of x, taken from `cache_x` (the previous
    chunk's last input frames, at most `past` of them) and completed with zero frames; symmetric zero
    padding in height and width. The output has x's dtype; bf16/fp16 inputs are accumulated in fp32."""
    padding, stride = tuple(int(p) for p in padding), tuple(int(s) for s in stride)
    check_inputs(x, weight, bias, cache_x, padding, stride)
    backend = _backend.select(x.device)
    if backend == "reference" or not _has_kernel(backend):
        return reference.causal_conv3d(x, weight, bias, cache_x, padding, stride)
    return torch.ops.cosmos_engine.causal_conv3d_fwd(x, weight, bias, cache_x, list(padding), list(stride))
