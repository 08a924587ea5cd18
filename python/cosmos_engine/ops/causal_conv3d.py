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

The compiled op `cosmos_engine::causal_conv3d_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? cache_x,
int[3] padding, int[3] stride) -> Tensor` (csrc/causal_conv3d) reads x and cache_x in place through their
strides, never materialises torch.cat or F.pad copies, and returns a channels_last_3d tensor (NDHWC
strides) in x's dtype. Channels-last inputs are read as they are; other layouts are converted once, inside
the same pass. It is forward only (the VAE is frozen): asking for a gradient raises.

How it runs: one fused gather writes the zero-padded, cache-prefixed channels-last input once (in fp32 on
the CPU, x's dtype on CUDA), then ATen's convolution runs on it: oneDNN's channels-last kernel on the CPU
(at::convolution picks mkldnn_convolution for channels_last_3d fp32 and returns channels_last_3d),
cuDNN's NDHWC kernel on CUDA (bf16/fp16 accumulate in fp32 inside cuDNN). Convs without past, padding or
cache frames (the 1x1x1 shortcuts, the first chunk's stride-2 temporal downsample) skip the gather, and a
1x1x1 conv is one GEMM on the channels-last x viewed as [B*T*H*W, C_in] (cuBLAS / the CPU BLAS). For small
inputs (B*C*T*H <= 20480) ATen's heuristic takes its native conv instead of oneDNN; the result is then
converted to channels-last once.

Why not an implicit GEMM on the CPU: both designs were measured in one run of
benchmarks/kernels/bench_causal_conv3d.py (2B channels, 64x64 video, chunks of 4 frames + cache, fp32,
2 Zen 3 threads under a load average of ~15, so ratios, not absolute rates, are what count; that run's
JSON is benchmarks/results/20261202_cpu_causal_conv3d.json as of commit d9d58ee, which also holds the
experiment's code). An AVX2/FMA implicit GEMM (a register tile of 6 output pixels x 16 output channels,
taps and C_in reduced in place from the cache and the chunk) ran at 0.32-0.56x the speed of gather + oneDNN
on every 3x3x3 and (3,1,1) conv (res3x3x3 96ch@64x64: 1633 ms vs 756 ms; 384ch@16x16: 2038 vs 860;
time_up 384->768: 516 vs 183): oneDNN's JIT kernel blocks C_in for the caches and prefetches the weights,
which the plain tile does not, and the gather costs one copy of the input against 27 * C_in MACs per
input element. The tile won only on the 1x1x1 shortcut (30 vs 60 ms), because ATen sent that shape to its
channels-first native path; the direct GEMM above now covers that case. So gather + ATen is kept.
Against the reference (same machine, interleaved timing, the current JSON): 0.87-1.44x, about 1.0-1.17x
on the 3x3x3 convs where the same oneDNN conv dominates, 1.14-1.44x on the temporal convs where the
removed cat/pad copies weigh more.

`force_backend("reference")` runs the PyTorch reference (`reference.causal_conv3d`: cat + F.pad + conv3d).
"""

from __future__ import annotations

import torch

from cosmos_engine.ops import _backend, _library, reference

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


def output_shape(x_shape, weight_shape, padding, stride) -> tuple[int, ...]:
    """[B, C_out, T_out, H_out, W_out] of the convolution (padding = (past, height, width))."""
    past, pad_h, pad_w = padding
    return (x_shape[0], weight_shape[0], (past + x_shape[2] - weight_shape[2]) // stride[0] + 1,
            (x_shape[3] + 2 * pad_h - weight_shape[3]) // stride[1] + 1,
            (x_shape[4] + 2 * pad_w - weight_shape[4]) // stride[2] + 1)


def _register() -> None:
    """The fake and the (refusing) autograd formula of the compiled op (only when _C is loaded)."""

    @torch.library.register_fake(_OP)
    def _fwd_fake(x, weight, bias, cache_x, padding, stride):
        torch._check(x.dim() == 5 and weight.dim() == 5 and weight.shape[1] == x.shape[1],
                     lambda: "causal_conv3d: 'x' [B, C, T, H, W] and 'weight' [C_out, C, kT, kH, kW] do not match")
        torch._check(cache_x is None or cache_x.shape[2] <= padding[0],
                     lambda: "causal_conv3d: 'cache_x' holds more frames than 'padding' allows")
        return torch.empty(output_shape(x.shape, weight.shape, padding, stride), dtype=x.dtype, device=x.device,
                           memory_format=torch.channels_last_3d)

    def _backward(ctx, grad_out):
        raise RuntimeError("causal_conv3d: the compiled op is forward only (the VAE is frozen); run the VAE under "
                           "torch.no_grad(), or use force_backend('reference') to differentiate through it")

    torch.library.register_autograd(_OP, _backward, setup_context=lambda ctx, inputs, output: None)


if _library.is_loaded():
    _register()


def causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  cache_x: torch.Tensor | None = None, padding: tuple[int, int, int] = (0, 0, 0),
                  stride: tuple[int, int, int] = (1, 1, 1)) -> torch.Tensor:
    """Causal-in-time 3-D convolution of x [B, C_in, T, H, W] (see the module docstring for the contract).

    `padding = (past, height, width)`: `past` frames in front of x, taken from `cache_x` (the previous
    chunk's last input frames, at most `past` of them) and completed with zero frames; symmetric zero
    padding in height and width. The output has x's dtype; bf16/fp16 inputs are accumulated in fp32. The
    compiled op returns it channels_last_3d and has no backward."""
    padding, stride = tuple(int(p) for p in padding), tuple(int(s) for s in stride)
    check_inputs(x, weight, bias, cache_x, padding, stride)
    if _backend.select(x.device) == "reference":
        return reference.causal_conv3d(x, weight, bias, cache_x, padding, stride)
    return torch.ops.cosmos_engine.causal_conv3d_fwd(x, weight, bias, cache_x, list(padding), list(stride))
