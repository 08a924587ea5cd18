"""adaln_layernorm: the compiled kernels against the PyTorch reference (ops/reference.py)."""

from __future__ import annotations

import os

import pytest
import torch

import cosmos_engine
from cosmos_engine import ops
from cosmos_engine.ops import reference
from tests.ops.fused import assert_close, assert_compiles_like_eager, forward_and_grads
from tests.tolerances import ELEMENTWISE, reduction_atol

pytestmark = pytest.mark.skipif(not cosmos_engine.build_info()["loaded"], reason="the compiled library _C is not built")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (B, T, tokens per frame, D): the real width and tokens/frame scaled down, plus odd sizes.
SHAPES = [
    (1, 3, 120, 2048),   # Cosmos geometry, 3 latent frames
    (2, 2, 37, 2048),    # B = 2, token count not a multiple of any tile
    (1, 1, 50, 2049),    # T = 1 (one modulation row for all tokens), D odd
    (2, 3, 5, 100),      # D not a multiple of 8 or of the 16 CPU lanes
    (1, 4, 1, 7),        # one token per frame, tiny D
]


def make_inputs(shape, dtype, device, mod_dtype=None, seed=0):
    batch, frames, tokens_per_frame, dim = shape
    gen = torch.Generator().manual_seed(seed)
    mod_dtype = mod_dtype or dtype
    x = torch.randn(batch, frames * tokens_per_frame, dim, generator=gen) * 3 + 0.5
    shift = torch.randn(batch, frames, dim, generator=gen)
    scale = torch.randn(batch, frames, dim, generator=gen) * 0.5
    return x.to(device, dtype), shift.to(device, mod_dtype), scale.to(device, mod_dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_match_reference(shape, dtype, device):
    x, shift, scale = make_inputs(shape, dtype, device)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, grads = forward_and_grads(ops.adaln_layernorm, (x, shift, scale), grad_out)
    # The reference runs in fp32 from the same (rounded) inputs; the kernel rounds its fp32 result once.
    ref_out, ref_grads = forward_and_grads(
        reference.adaln_layernorm, (x.float(), shift.float(), scale.float()), grad_out.float())
    atol, rtol = ELEMENTWISE[dtype]
    assert out.dtype == dtype
    assert_close(out.float(), ref_out, atol, rtol, "out")
    # grad_x: two row reductions over D per element, then one rounding, as for the output.
    assert_close(grads[0].float(), ref_grads[0], atol, rtol, "grad_x")
    # grad_shift/grad_scale sum tokens_per_frame products in fp32 in a different order.
    tokens_per_frame = shape[2]
    for i, name in ((1, "grad_shift"), (2, "grad_scale")):
        assert grads[i].dtype == dtype
        red_atol = reduction_atol(torch.float32, tokens_per_frame) * ref_grads[i].abs().max().item() + atol
        assert_close(grads[i].float(), ref_grads[i], red_atol, rtol, name)


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_modulation_with_bf16_activations(device):
    """The official net computes the modulation in fp32 and may hand it over without casting."""
    x, shift, scale = make_inputs((1, 2, 64, 256), torch.bfloat16, device, mod_dtype=torch.float32)
    grad_out = torch.randn(x.shape, dtype=torch.bfloat16, device=device)
    out, grads = forward_and_grads(ops.adaln_layernorm, (x, shift, scale), grad_out)
    ref_out, ref_grads = forward_and_grads(reference.adaln_layernorm, (x.float(), shift, scale), grad_out.float())
    assert out.dtype == torch.bfloat16 and grads[1].dtype == torch.float32 and grads[2].dtype == torch.float32
    atol, rtol = ELEMENTWISE[torch.bfloat16]
    assert_close(out.float(), ref_out, atol, rtol, "out")
    assert_close(grads[2], ref_grads[2], reduction_atol(torch.float32, 64) * ref_grads[2].abs().max().item() + atol,
                 rtol, "grad_scale")


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    """x as a strided view of a wider tensor, shift/scale as chunks of the [B, T, 3D] modulation."""
    batch, frames, tokens_per_frame, dim = 2, 3, 17, 96
    wide = torch.randn(batch, frames * tokens_per_frame, dim * 2, device=device)
    x = wide[..., ::2]
    assert not x.is_contiguous()
    modulation = torch.randn(batch, frames, 3 * dim, device=device)
    shift, scale, _gate = modulation.chunk(3, dim=-1)
    assert not shift.is_contiguous()
    grad_out = torch.randn(batch, frames * tokens_per_frame, dim, device=device)
    out, grads = forward_and_grads(ops.adaln_layernorm, (x, shift, scale), grad_out)
    ref_out, ref_grads = forward_and_grads(reference.adaln_layernorm, (x, shift, scale), grad_out)
    atol, rtol = ELEMENTWISE[torch.float32]
    assert_close(out, ref_out, atol, rtol, "out")
    assert_close(grads[0], ref_grads[0], atol, rtol, "grad_x")
    for got, want, name in zip(grads[1:], ref_grads[1:], ("grad_shift", "grad_scale")):
        assert_close(got, want, reduction_atol(torch.float32, tokens_per_frame) * want.abs().max().item(), rtol, name)


def test_poisoned_outputs_are_fully_written():
    """With poisoning on (conftest), every output element starts as NaN; all must be overwritten."""
    assert os.environ["COSMOS_ENGINE_POISON_OUTPUTS"] == "1"
    x, shift, scale = make_inputs((2, 3, 33, 130), torch.float32, "cpu")
    out, mean, rstd = torch.ops.cosmos_engine.adaln_layernorm_fwd(x, shift, scale, 33, 1e-6)
    grads = torch.ops.cosmos_engine.adaln_layernorm_bwd(torch.randn_like(x), x, scale, mean, rstd, 33)
    for t in (out, mean, rstd, *grads):
        assert torch.isfinite(t).all()


def test_opcheck():
    x, shift, scale = make_inputs((2, 2, 9, 40), torch.float32, "cpu")
    for t in (x, shift, scale):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.cosmos_engine.adaln_layernorm_fwd, (x, shift, scale, 9, 1e-6))
    out, mean, rstd = torch.ops.cosmos_engine.adaln_layernorm_fwd(x.detach(), shift.detach(), scale.detach(), 9, 1e-6)
    torch.library.opcheck(torch.ops.cosmos_engine.adaln_layernorm_bwd,
                          (torch.randn_like(out), x.detach(), scale.detach(), mean, rstd, 9))


def test_torch_compile_fullgraph():
    assert_compiles_like_eager(ops.adaln_layernorm, make_inputs((1, 2, 16, 64), torch.float32, "cpu"))


def test_gradcheck_fp64():
    x, shift, scale = make_inputs((1, 2, 3, 5), torch.float64, "cpu")
    inputs = tuple(t.requires_grad_() for t in (x, shift, scale))
    assert torch.autograd.gradcheck(ops.adaln_layernorm, inputs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(2, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8)), "'x' must be \\[B, T\\*H\\*W, D\\]"),
        (lambda: (torch.randn(1, 6, 8), torch.randn(1, 4, 8), torch.randn(1, 4, 8)), "not a whole number of tokens per frame"),
        (lambda: (torch.randn(1, 6, 8), torch.randn(1, 2, 9), torch.randn(1, 2, 9)), "'shift' has shape"),
        (lambda: (torch.randn(1, 6, 8), torch.randn(1, 2, 8), torch.randn(1, 3, 8)), "'scale' has shape"),
        (lambda: (torch.randn(1, 6, 8).int(), torch.randn(1, 2, 8), torch.randn(1, 2, 8)), "'x' must be float32"),
        (lambda: (torch.randn(1, 6, 8).half(), torch.randn(1, 2, 8).bfloat16(), torch.randn(1, 2, 8).bfloat16()),
         "'shift' must have the dtype of 'x'"),
        (lambda: (torch.randn(1, 6, 8), torch.randn(1, 2, 8, device="meta"), torch.randn(1, 2, 8)), "'shift' is on meta"),
    ],
    ids=["rank", "frames", "dim", "scale-shape", "int-dtype", "mixed-dtype", "device"],
)
def test_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.adaln_layernorm(*make())


def test_compiled_op_checks_arguments_too():
    """Called directly (bypassing the Python checks), the C++ entry names the argument."""
    x = torch.randn(1, 6, 8)
    with pytest.raises(RuntimeError, match="'scale' has 2 frames of 2 tokens = 4 tokens, but argument 'x' has 6"):
        torch.ops.cosmos_engine.adaln_layernorm_fwd(x, torch.randn(1, 2, 8), torch.randn(1, 2, 8), 2, 1e-6)
    with pytest.raises(RuntimeError, match="'grad_out' must be"):
        out, mean, rstd = torch.ops.cosmos_engine.adaln_layernorm_fwd(x, torch.randn(1, 2, 8), torch.randn(1, 2, 8), 3, 1e-6)
        torch.ops.cosmos_engine.adaln_layernorm_bwd(out.double(), x, torch.randn(1, 2, 8), mean, rstd, 3)


def test_reference_backend_is_selectable():
    x, shift, scale = make_inputs((1, 2, 8, 32), torch.float32, "cpu")
    with ops.force_backend("reference"):
        via_reference = ops.adaln_layernorm(x, shift, scale)
    torch.testing.assert_close(via_reference, reference.adaln_layernorm(x, shift, scale), atol=0, rtol=0)
    with ops.force_backend("cpu"):
        via_kernel = ops.adaln_layernorm(x, shift, scale)
    torch.testing.assert_close(via_kernel, via_reference, atol=1e-5, rtol=1e-5)
