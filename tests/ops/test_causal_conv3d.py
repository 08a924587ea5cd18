"""causal_conv3d: the compiled op against the PyTorch reference (ops/reference.py).

Every conv the 2B VAE sends through the op (wan_vae.py: CausalConv3d and Resample.time_conv), with the
channels 96/192/384 shrunk, odd heights/widths, the first chunk (T = 1) and later chunks of 4 frames with a
full cache, a cache shorter than the past context, and none; then layouts (channels-last in, channels-first
and strided views converted), dtypes, poisoning, opcheck, torch.compile, errors and the refused backward.
"""

from __future__ import annotations

import os

import pytest
import torch

import cosmos_engine
from cosmos_engine import ops
from cosmos_engine.ops import reference
from tests.ops.fused import assert_close
from tests.tolerances import ELEMENTWISE, reduction_atol

pytestmark = pytest.mark.skipif(not cosmos_engine.build_info()["loaded"], reason="the compiled library _C is not built")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CL = torch.channels_last_3d

# (name, C_in, C_out, kernel, padding, stride): the 2B VAE's convs with 96/192/384 -> 8/12/16 channels,
# z_dim 16 -> 4. padding = (past, height, width) as CausalConv3d passes it (2 * the official pt).
CONVS = [
    ("encoder.conv1", 3, 8, (3, 3, 3), (2, 1, 1), (1, 1, 1)),
    ("residual.conv", 12, 12, (3, 3, 3), (2, 1, 1), (1, 1, 1)),
    ("residual.widen", 8, 12, (3, 3, 3), (2, 1, 1), (1, 1, 1)),
    ("shortcut.1x1x1", 8, 12, (1, 1, 1), (0, 0, 0), (1, 1, 1)),
    ("time_upsample", 16, 32, (3, 1, 1), (2, 0, 0), (1, 1, 1)),
    ("time_downsample.cached", 12, 12, (3, 1, 1), (1, 0, 0), (2, 1, 1)),
    ("time_downsample.first", 12, 12, (3, 1, 1), (0, 0, 0), (2, 1, 1)),
    ("encoder.head", 16, 8, (3, 3, 3), (2, 1, 1), (1, 1, 1)),
    ("decoder.conv1", 4, 16, (3, 3, 3), (2, 1, 1), (1, 1, 1)),
    ("decoder.head", 8, 3, (3, 3, 3), (2, 1, 1), (1, 1, 1)),
    ("spatial_stride", 8, 8, (3, 3, 3), (2, 1, 1), (1, 2, 2)),  # not in the VAE; the op takes any stride
]
# (frames of x, cache frames or None): the first chunk, the second (one cached frame < past), later ones.
CHUNKS = [(1, None), (4, 1), (4, 2), (4, None)]


def make_inputs(cin, cout, kernel, frames, cache_frames, height, width, dtype, device, seed=0,
                memory_format=CL):
    """Unit-scale inputs and weights scaled by 1/sqrt(fan-in), so outputs are unit scale too."""
    gen = torch.Generator().manual_seed(seed)
    fan_in = cin * kernel[0] * kernel[1] * kernel[2]
    x = torch.randn(1, cin, frames, height, width, generator=gen)
    weight = torch.randn(cout, cin, *kernel, generator=gen) / fan_in**0.5
    bias = torch.randn(cout, generator=gen)
    cache = None if cache_frames is None else torch.randn(1, cin, cache_frames, height, width, generator=gen)
    x = x.to(device, dtype).contiguous(memory_format=memory_format)
    cache = None if cache is None else cache.to(device, dtype).contiguous(memory_format=memory_format)
    return x, weight.to(device, dtype), bias.to(device, dtype), cache, fan_in


def check_against_reference(x, weight, bias, cache, padding, stride, fan_in):
    out = ops.causal_conv3d(x, weight, bias, cache, padding, stride)
    up = (lambda t: None if t is None else t.float())
    expected = reference.causal_conv3d(up(x), up(weight), up(bias), up(cache), padding, stride)
    assert out.shape == expected.shape and out.dtype == x.dtype
    assert out.is_contiguous(memory_format=CL), f"the output must be channels_last_3d, got strides {out.stride()}"
    # Both sides take the same rounded inputs to fp32 and sum fan_in products in different orders; the
    # kernel then rounds once to x's dtype.
    atol, rtol = ELEMENTWISE[x.dtype]
    assert_close(out.float(), expected, reduction_atol(torch.float32, fan_in) * 4 + atol, rtol, "out")
    return out


def cases():
    for name, cin, cout, kernel, padding, stride in CONVS:
        for frames, cache_frames in CHUNKS:
            if cache_frames is not None and cache_frames > padding[0]:
                continue  # the conv has no past context, so no cache
            if padding[0] + frames < kernel[0]:
                continue  # the VAE never runs a temporal window this short (it passes the frame through)
            yield pytest.param(cin, cout, kernel, padding, stride, frames, cache_frames,
                               id=f"{name}-T{frames}-cache{cache_frames}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cin, cout, kernel, padding, stride, frames, cache_frames", list(cases()))
def test_vae_convs_match_reference_fp32(cin, cout, kernel, padding, stride, frames, cache_frames, device):
    x, weight, bias, cache, fan_in = make_inputs(cin, cout, kernel, frames, cache_frames, 7, 9, torch.float32, device)
    check_against_reference(x, weight, bias, cache, padding, stride, fan_in)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("conv", [CONVS[1], CONVS[3], CONVS[4], CONVS[5]], ids=lambda c: c[0])
def test_dtypes_match_reference(conv, dtype, device):
    _name, cin, cout, kernel, padding, stride = conv
    cache_frames = padding[0] if padding[0] else None
    x, weight, bias, cache, fan_in = make_inputs(cin, cout, kernel, 4, cache_frames, 6, 5, dtype, device, seed=1)
    check_against_reference(x, weight, bias, cache, padding, stride, fan_in)


def test_chunked_with_cache_equals_whole_sequence():
    """The VAE's use: chunks of 1 then 4 frames, each with the last two input frames (views) as the cache."""
    x, weight, bias, _, _ = make_inputs(8, 8, (3, 3, 3), 9, None, 5, 7, torch.float32, "cpu", seed=2)
    whole = ops.causal_conv3d(x, weight, bias, None, (2, 1, 1))
    parts = [ops.causal_conv3d(x[:, :, :1], weight, bias, None, (2, 1, 1)),
             ops.causal_conv3d(x[:, :, 1:5], weight, bias, x[:, :, :1], (2, 1, 1)),
             ops.causal_conv3d(x[:, :, 5:], weight, bias, x[:, :, 3:5], (2, 1, 1))]
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "layout",
    ["channels_first", "strided_views", "permuted"],
)
def test_other_layouts_are_converted_correctly(layout):
    x, weight, bias, cache, fan_in = make_inputs(8, 12, (3, 3, 3), 4, 2, 7, 5, torch.float32, "cpu", seed=3,
                                                 memory_format=torch.contiguous_format)
    if layout == "strided_views":  # x and cache as time slices of one channels-last video, W every other column
        video = torch.randn(1, 8, 8, 7, 10).contiguous(memory_format=CL)
        x, cache = video[:, :, 4:, :, ::2], video[:, :, 1:3, :, ::2]
    elif layout == "permuted":  # [B, T, C, H, W] storage, as the per-frame 2-D layers leave it
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
        cache = cache.transpose(1, 2).contiguous().transpose(1, 2)
    assert not x.is_contiguous(memory_format=CL)
    check_against_reference(x, weight, bias, cache, (2, 1, 1), (1, 1, 1), fan_in)


@pytest.mark.parametrize("conv", [("residual.conv", 64, 64, (3, 3, 3), (2, 1, 1)), ("shortcut", 64, 96, (1, 1, 1), (0, 0, 0))],
                         ids=lambda c: c[0])
def test_channels_last_fp32_makes_no_activation_copies(conv):
    """Channels-last fp32 x and cache are read in place: no cat or pad runs and nothing of their size is
    copied (the gather writes the padded buffer itself; a 1x1x1 conv is one GEMM on x). The height is
    large enough for ATen to pick oneDNN (B*C*T*H > 20480), which keeps channels-last throughout."""
    _name, cin, cout, kernel, padding = conv
    x, weight, bias, cache, _ = make_inputs(cin, cout, kernel, 4, padding[0] or None, 96, 3, torch.float32, "cpu")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        out = ops.causal_conv3d(x, weight, bias, cache, padding)
    events = prof.key_averages(group_by_input_shape=True)
    ran = {e.key for e in events}
    expected = "aten::addmm" if kernel == (1, 1, 1) else "aten::mkldnn_convolution"  # 1x1x1: one GEMM on x
    assert expected in ran and not ran & {"aten::cat", "aten::constant_pad_nd", "aten::pad"}, ran
    copies = [(e.key, e.input_shapes) for e in events if e.key in ("aten::copy_", "aten::clone", "aten::contiguous")]
    activation_copies = [c for c in copies if any(len(s) == 5 and s[:2] == [1, cin] for s in c[1])]
    assert not activation_copies, activation_copies  # (oneDNN may reorder the small weight)
    assert out.is_contiguous(memory_format=CL)


def test_poisoned_outputs_are_fully_written():
    """With poisoning on (conftest), the padded buffer and any converted output start as NaN; a padded
    element the gather forgets (border, zero frames) would reach the output."""
    assert os.environ["COSMOS_ENGINE_POISON_OUTPUTS"] == "1"
    for dtype in (torch.float32, torch.bfloat16):
        x, weight, bias, cache, _ = make_inputs(5, 6, (3, 3, 3), 3, 1, 6, 7, dtype, "cpu")
        out = torch.ops.cosmos_engine.causal_conv3d_fwd(x, weight, bias, cache, [2, 1, 1], [1, 1, 1])
        assert out.shape == (1, 6, 3, 6, 7) and torch.isfinite(out).all()
        x, weight, bias, _, _ = make_inputs(5, 6, (1, 1, 1), 3, None, 6, 7, dtype, "cpu")  # the 1x1x1 GEMM path
        out = torch.ops.cosmos_engine.causal_conv3d_fwd(x, weight, bias, None, [0, 0, 0], [1, 1, 1])
        assert out.shape == (1, 6, 3, 6, 7) and torch.isfinite(out).all()


def test_opcheck():
    x, weight, bias, cache, _ = make_inputs(4, 6, (3, 3, 3), 2, 1, 5, 4, torch.float32, "cpu")
    torch.library.opcheck(torch.ops.cosmos_engine.causal_conv3d_fwd, (x, weight, bias, cache, [2, 1, 1], [1, 1, 1]))
    x, weight, _, _, _ = make_inputs(4, 4, (3, 1, 1), 5, None, 3, 4, torch.float32, "cpu")
    torch.library.opcheck(torch.ops.cosmos_engine.causal_conv3d_fwd, (x, weight, None, None, [0, 0, 0], [2, 1, 1]))
    x, weight, bias, _, _ = make_inputs(4, 6, (1, 1, 1), 3, None, 3, 5, torch.float32, "cpu")
    torch.library.opcheck(torch.ops.cosmos_engine.causal_conv3d_fwd, (x, weight, bias, None, [0, 0, 0], [1, 1, 1]))


def test_torch_compile_fullgraph():
    x, weight, bias, cache, _ = make_inputs(4, 6, (3, 3, 3), 4, 2, 5, 6, torch.float32, "cpu")

    def block(x, cache):
        return ops.causal_conv3d(x, weight, bias, cache, (2, 1, 1)) * 2 + 1

    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, cache), block(x, cache), atol=0, rtol=0)


def test_backward_raises():
    x, weight, bias, cache, _ = make_inputs(4, 6, (3, 3, 3), 2, None, 5, 4, torch.float32, "cpu")
    out = ops.causal_conv3d(x.requires_grad_(), weight, bias, cache, (2, 1, 1))
    with pytest.raises(RuntimeError, match="forward only"):
        out.sum().backward()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, w, c: (x[0], w, None, None, [2, 1, 1], [1, 1, 1]), "argument 'x' must have 5 dimensions"),
        (lambda x, w, c: (x, w[:, :3], None, None, [2, 1, 1], [1, 1, 1]), "argument 'weight' has size 3 in dimension 1"),
        (lambda x, w, c: (x, w.double(), None, None, [2, 1, 1], [1, 1, 1]), "argument 'weight' must be Float"),
        (lambda x, w, c: (x, w, torch.zeros(5), None, [2, 1, 1], [1, 1, 1]), "argument 'bias' has size 5"),
        (lambda x, w, c: (x, w, None, c, [1, 1, 1], [1, 1, 1]), "argument 'cache_x' holds 2 frames"),
        (lambda x, w, c: (x, w, None, c[..., :4], [2, 1, 1], [1, 1, 1]), "argument 'cache_x' has size 4 in dimension 4"),
        (lambda x, w, c: (x, w, None, None, [2, -1, 1], [1, 1, 1]), "argument 'padding' must be"),
        (lambda x, w, c: (x, w, None, None, [2, 1, 1], [1, 0, 1]), "argument 'stride' must be"),
        (lambda x, w, c: (x[:, :, :1], w, None, None, [0, 1, 1], [1, 1, 1]), "fewer than the temporal kernel size"),
    ],
    ids=["x-rank", "weight-channels", "weight-dtype", "bias-size", "cache-frames", "cache-width", "padding",
         "stride", "too-few-frames"],
)
def test_compiled_op_names_the_bad_argument(call, match):
    """Called directly (bypassing the Python checks), the C++ entry names the argument."""
    x, weight, _, cache, _ = make_inputs(4, 6, (3, 3, 3), 2, 2, 5, 5, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.cosmos_engine.causal_conv3d_fwd(*call(x, weight, cache))


def test_reference_backend_is_selectable():
    x, weight, bias, cache, _ = make_inputs(4, 6, (3, 3, 3), 4, 2, 5, 6, torch.float32, "cpu")
    with ops.force_backend("reference"):
        via_reference = ops.causal_conv3d(x, weight, bias, cache, (2, 1, 1))
    torch.testing.assert_close(via_reference, reference.causal_conv3d(x, weight, bias, cache, (2, 1, 1)), atol=0, rtol=0)
    with ops.force_backend("cpu"):
        via_kernel = ops.causal_conv3d(x, weight, bias, cache, (2, 1, 1))
    assert via_kernel.is_contiguous(memory_format=CL)
    torch.testing.assert_close(via_kernel, via_reference, atol=1e-5, rtol=1e-5)
