"""rms_norm_silu: the compiled kernels against the PyTorch reference (ops/reference.py), forward only."""

from __future__ import annotations

import os

import pytest
import torch

import cosmos_engine
from cosmos_engine import ops
from cosmos_engine.ops import reference
from tests.ops.fused import assert_close
from tests.tolerances import ELEMENTWISE

pytestmark = pytest.mark.skipif(not cosmos_engine.build_info()["loaded"], reason="the compiled library _C is not built")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Videos [B, C, T, H, W] as the residual blocks and heads see them, and per-frame images [B*T, C, H, W] as
# the attention blocks do: the 2B widths 96/192/384 scaled down and kept, odd sizes, C not a multiple
# of the 8-lane vector (or of 32 lanes of a warp).
SHAPES = [
    (1, 96, 1, 5, 7),    # the decoder's full-resolution width, first frame alone
    (2, 20, 4, 3, 5),    # B = 2, a 4-frame chunk, C a multiple of neither 8 nor 32
    (1, 384, 2, 4, 3),   # the middle blocks' width
    (1, 3, 2, 3, 3),     # fewer channels than one vector
    (3, 192, 5, 7),      # images: B*T frames of 192 channels
    (2, 13, 3, 3),       # images, odd C
]
LAYOUTS = ["channels_last", "channels_first", "strided"]


def make_input(shape, dtype, device, layout, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    if layout == "strided":  # every other channel of a wider tensor: channels neither innermost nor dense
        wide = list(shape)
        wide[1] *= 2
        x = (torch.randn(wide, generator=gen) * scale).to(device, dtype)[:, ::2]
    else:
        x = (torch.randn(shape, generator=gen) * scale).to(device, dtype)
        if layout == "channels_last":
            x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    gamma = 1 + 0.1 * torch.randn(shape[1], *(1,) * (len(shape) - 2), generator=gen)
    return x, gamma.to(device, dtype)


def channels_innermost(t: torch.Tensor) -> bool:
    return t.movedim(1, -1).is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("silu", [True, False], ids=["silu", "norm"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, dtype, layout, silu, device):
    x, gamma = make_input(shape, dtype, device, layout)
    if layout == "channels_last":
        assert channels_innermost(x)
    elif layout == "strided":
        assert not x.is_contiguous() and not channels_innermost(x)
    out = ops.rms_norm_silu(x, gamma, silu)
    # The reference runs in fp32 from the same (rounded) inputs; the kernel rounds its fp32 result once.
    ref = reference.rms_norm_silu(x.float(), gamma.float(), silu)
    atol, rtol = ELEMENTWISE[dtype]
    assert out.shape == x.shape and out.dtype == dtype
    assert channels_innermost(out), "the kernel's output is channels-last whatever the input layout"
    assert_close(out.float(), ref, atol, rtol, "out")


def test_fp64_matches_reference():
    x, gamma = make_input((2, 20, 3, 4, 5), torch.float64, "cpu", "channels_last")
    for silu in (True, False):
        atol, rtol = ELEMENTWISE[torch.float64]
        assert_close(ops.rms_norm_silu(x, gamma, silu), reference.rms_norm_silu(x, gamma, silu), atol, rtol, "out")


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_gamma_with_bf16_activations(device):
    x, gamma = make_input((1, 96, 2, 4, 6), torch.bfloat16, device, "channels_last")
    gamma = gamma.float() + 0.01
    out = ops.rms_norm_silu(x, gamma, True)
    atol, rtol = ELEMENTWISE[torch.bfloat16]
    assert_close(out.float(), reference.rms_norm_silu(x.float(), gamma, True), atol, rtol, "out")


def test_silu_saturates_like_the_reference():
    """Large |y| (gamma up to +-100, so y passes +-88 where exp(-y) over- or underflows in fp32): no NaN,
    silu(y) ~ y above, ~ 0 below."""
    x, _ = make_input((1, 40, 2, 6, 7), torch.float32, "cpu", "channels_last", scale=5.0)
    gamma = torch.linspace(-100, 100, 40)
    normed = reference.rms_norm_silu(x, gamma, False)
    assert normed.min() < -100 and normed.max() > 100
    out = ops.rms_norm_silu(x, gamma, True)
    ref = reference.rms_norm_silu(x, gamma, True)
    # relative to each value's own size: silu(y) ~ y for large y, ~ y e^y (tiny) for very negative y
    assert_close(out, ref, 1e-5, 1e-5, "out")


def test_zero_rows_give_zeros():
    """F.normalize divides by max(||x||, 1e-12): a zero pixel stays zero (no 0/0)."""
    x, gamma = make_input((1, 24, 2, 3, 3), torch.float32, "cpu", "channels_last")
    x[:, :, 1, 2] = 0
    for silu in (True, False):
        out = ops.rms_norm_silu(x, gamma, silu)
        assert torch.isfinite(out).all() and (out[:, :, 1, 2] == 0).all()
        assert_close(out, reference.rms_norm_silu(x, gamma, silu), 1e-5, 1e-5, "out")


def test_a_nan_pixel_stays_in_its_row():
    """A NaN input poisons its own pixel's output only (the kernel's padded row buffer is not reused dirty)."""
    x, gamma = make_input((1, 20, 1, 4, 4), torch.float32, "cpu", "channels_last")
    x[0, 3, 0, 1, 1] = float("nan")
    out = ops.rms_norm_silu(x, gamma, True)
    bad = torch.zeros(1, 1, 1, 4, 4, dtype=torch.bool)
    bad[..., 1, 1] = True
    assert out[bad.expand_as(out)].isnan().all()
    assert torch.isfinite(out[~bad.expand_as(out)]).all()


def test_poisoned_outputs_are_fully_written():
    """With poisoning on (conftest), every output element starts as NaN; all must be overwritten."""
    assert os.environ["COSMOS_ENGINE_POISON_OUTPUTS"] == "1"
    for shape in ((2, 37, 3, 5, 9), (5, 100, 3, 3)):
        for dtype in DTYPES:
            x, gamma = make_input(shape, dtype, "cpu", "channels_last")
            for silu in (True, False):
                assert torch.isfinite(torch.ops.cosmos_engine.rms_norm_silu_fwd(x, gamma, silu)).all()


def test_opcheck():
    for layout in ("channels_last", "channels_first"):
        x, gamma = make_input((2, 12, 3, 4, 5), torch.float32, "cpu", layout)
        for silu in (True, False):
            torch.library.opcheck(torch.ops.cosmos_engine.rms_norm_silu_fwd, (x, gamma, silu))
        image, image_gamma = make_input((3, 12, 4, 5), torch.bfloat16, "cpu", layout)
        torch.library.opcheck(torch.ops.cosmos_engine.rms_norm_silu_fwd, (image, image_gamma, True))


def test_torch_compile_fullgraph():
    x, gamma = make_input((1, 40, 2, 5, 6), torch.float32, "cpu", "channels_last")

    def block(x, gamma):
        return ops.rms_norm_silu(x, gamma, True) * 2 + 1

    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, gamma), block(x, gamma), atol=0, rtol=0)


def test_backward_raises_a_clear_error():
    x, gamma = make_input((1, 16, 1, 3, 3), torch.float32, "cpu", "channels_last")
    x.requires_grad_()
    out = ops.rms_norm_silu(x, gamma, True)
    with pytest.raises(RuntimeError, match="rms_norm_silu: the compiled op is forward only"):
        out.sum().backward()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(8), torch.ones(8)), "'x' must be \\[B, C, ...\\]"),
        (lambda: (torch.randn(1, 8, 2, 2), torch.ones(7)), "'gamma' must hold one value per channel"),
        (lambda: (torch.randn(1, 8, 2, 2), torch.ones(1, 8)), "'gamma' must hold one value per channel"),
        (lambda: (torch.randn(1, 8, 2, 2).int(), torch.ones(8)), "'x' must be float32"),
        (lambda: (torch.randn(1, 8, 2, 2), torch.ones(8).int()), "'gamma' must be a floating-point"),
        (lambda: (torch.randn(1, 8, 2, 2), torch.ones(8, device="meta")), "'gamma' is on meta"),
    ],
    ids=["rank", "gamma-size", "gamma-shape", "int-x", "int-gamma", "device"],
)
def test_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.rms_norm_silu(*make())


def test_compiled_op_checks_arguments_too():
    """Called directly (bypassing the Python checks), the C++ entry names the argument."""
    x = torch.randn(1, 8, 2, 2)
    with pytest.raises(RuntimeError, match="argument 'gamma' must hold one value per channel"):
        torch.ops.cosmos_engine.rms_norm_silu_fwd(x, torch.ones(9), True)
    with pytest.raises(RuntimeError, match="argument 'gamma' must have the dtype of 'x'"):
        torch.ops.cosmos_engine.rms_norm_silu_fwd(x.half(), torch.ones(8).bfloat16(), True)
    with pytest.raises(RuntimeError, match="argument 'x' must be \\[B, C"):
        torch.ops.cosmos_engine.rms_norm_silu_fwd(torch.randn(8), torch.ones(8), True)


def test_reference_backend_is_selectable():
    x, gamma = make_input((1, 24, 2, 3, 4), torch.float32, "cpu", "channels_last")
    with ops.force_backend("reference"):
        via_reference = ops.rms_norm_silu(x, gamma, True)
    torch.testing.assert_close(via_reference, reference.rms_norm_silu(x, gamma, True), atol=0, rtol=0)
    with ops.force_backend("cpu"):
        via_kernel = ops.rms_norm_silu(x, gamma, True)
    torch.testing.assert_close(via_kernel, via_reference, atol=1e-5, rtol=1e-5)


def test_reference_is_the_official_expression():
    """reference.rms_norm_silu is, bit for bit in fp32, the official RMS_norm then SiLU."""
    x, gamma = make_input((2, 24, 2, 3, 4), torch.float32, "cpu", "channels_first")
    official = torch.nn.functional.silu(torch.nn.functional.normalize(x, dim=1) * 24**0.5 * gamma)
    assert torch.equal(reference.rms_norm_silu(x, gamma, True), official)
