"""gate_residual: the compiled kernels against the PyTorch reference (ops/reference.py)."""

from __future__ import annotations

import os

import pytest
import torch

import cosmos_engine
from cosmos_engine import ops
from cosmos_engine.ops import reference
from tests.ops.fused import (
    assert_close, assert_compiles_like_eager, assert_thread_count_does_not_matter, forward_and_grads)
from tests.tolerances import ELEMENTWISE, reduction_atol

pytestmark = pytest.mark.skipif(not cosmos_engine.build_info()["loaded"], reason="the compiled library _C is not built")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (B, T, tokens per frame, D): the real width and tokens/frame scaled down, plus odd sizes.
SHAPES = [
    (1, 3, 120, 2048),   # Cosmos geometry, 3 latent frames
    (2, 2, 37, 2048),    # B = 2, a frame longer than one backward chunk and not a multiple of it
    (1, 1, 50, 2049),    # T = 1 (one gate row for all tokens), D odd
    (2, 3, 5, 100),      # D not a multiple of the vector width
    (1, 4, 1, 7),        # one token per frame, tiny D
]


def make_inputs(shape, dtype, device, gate_dtype=None, seed=0):
    batch, frames, tokens_per_frame, dim = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames * tokens_per_frame, dim, generator=gen) * 2
    gate = torch.randn(batch, frames, dim, generator=gen)
    y = torch.randn(batch, frames * tokens_per_frame, dim, generator=gen)
    return x.to(device, dtype), gate.to(device, gate_dtype or dtype), y.to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_match_reference(shape, dtype, device):
    x, gate, y = make_inputs(shape, dtype, device)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, (grad_x, grad_gate, grad_y) = forward_and_grads(ops.gate_residual, (x, gate, y), grad_out)
    # The reference runs in fp32 from the same (rounded) inputs; the kernel rounds its fp32 result once.
    ref_out, (ref_grad_x, ref_grad_gate, ref_grad_y) = forward_and_grads(
        reference.gate_residual, (x.float(), gate.float(), y.float()), grad_out.float())
    atol, rtol = ELEMENTWISE[dtype]
    assert out.dtype == grad_y.dtype == grad_gate.dtype == dtype
    assert_close(out.float(), ref_out, atol, rtol, "out")
    assert torch.equal(grad_x, grad_out), "grad_x must be the incoming gradient itself"
    assert_close(grad_y.float(), ref_grad_y, atol, rtol, "grad_y")
    # grad_gate sums tokens_per_frame products in fp32 in a different order.
    red_atol = reduction_atol(torch.float32, shape[2]) * ref_grad_gate.abs().max().item() + atol
    assert_close(grad_gate.float(), ref_grad_gate, red_atol, rtol, "grad_gate")


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_gate_with_bf16_activations(device):
    """The official net computes the modulation (and so the gate) in fp32."""
    x, gate, y = make_inputs((1, 2, 64, 256), torch.bfloat16, device, gate_dtype=torch.float32)
    grad_out = torch.randn(x.shape, dtype=torch.bfloat16, device=device)
    out, grads = forward_and_grads(ops.gate_residual, (x, gate, y), grad_out)
    ref_out, ref_grads = forward_and_grads(reference.gate_residual, (x.float(), gate, y.float()), grad_out.float())
    assert out.dtype == torch.bfloat16 and grads[1].dtype == torch.float32 and grads[2].dtype == torch.bfloat16
    atol, rtol = ELEMENTWISE[torch.bfloat16]
    assert_close(out.float(), ref_out, atol, rtol, "out")
    assert_close(grads[1], ref_grads[1], reduction_atol(torch.float32, 64) * ref_grads[1].abs().max().item() + atol,
                 rtol, "grad_gate")


def test_mixed_x_and_y_dtypes_promote_like_pytorch():
    """fp32-master training: fp32 residual stream, bf16 matmul output, fp32 gate -> fp32, as x + gate * y."""
    x, gate, _ = make_inputs((1, 2, 8, 64), torch.float32, "cpu")
    y = torch.randn(x.shape).bfloat16()
    out = ops.gate_residual(x, gate, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x + gate.repeat_interleave(8, dim=1) * y, atol=1e-6, rtol=1e-6)


def test_non_contiguous_inputs():
    """x and y as strided views, the gate as a chunk of the [B, T, 3D] modulation."""
    batch, frames, tokens_per_frame, dim = 2, 3, 17, 96
    x = torch.randn(batch, frames * tokens_per_frame, dim * 2)[..., ::2]
    y = torch.randn(batch, frames * tokens_per_frame, dim * 2)[..., 1::2]
    _shift, _scale, gate = torch.randn(batch, frames, 3 * dim).chunk(3, dim=-1)
    assert not (x.is_contiguous() or y.is_contiguous() or gate.is_contiguous())
    grad_out = torch.randn(batch, frames * tokens_per_frame, dim)
    out, grads = forward_and_grads(ops.gate_residual, (x, gate, y), grad_out)
    ref_out, ref_grads = forward_and_grads(reference.gate_residual, (x, gate, y), grad_out)
    atol, rtol = ELEMENTWISE[torch.float32]
    assert_close(out, ref_out, atol, rtol, "out")
    assert_close(grads[2], ref_grads[2], atol, rtol, "grad_y")
    assert_close(grads[1], ref_grads[1], reduction_atol(torch.float32, tokens_per_frame) * ref_grads[1].abs().max().item(),
                 rtol, "grad_gate")


def test_poisoned_outputs_are_fully_written():
    """With poisoning on (conftest), every output element starts as NaN; all must be overwritten."""
    assert os.environ["COSMOS_ENGINE_POISON_OUTPUTS"] == "1"
    x, gate, y = make_inputs((2, 3, 70, 130), torch.float32, "cpu")
    out = torch.ops.cosmos_engine.gate_residual_fwd(x, gate, y, 70)
    grads = torch.ops.cosmos_engine.gate_residual_bwd(torch.randn_like(x), gate, y, 70)
    for t in (out, *grads):
        assert torch.isfinite(t).all()


def test_backward_is_deterministic():
    x, gate, y = make_inputs((1, 2, 300, 256), torch.float32, "cpu")
    grad_out = torch.randn_like(x)
    assert_thread_count_does_not_matter(lambda: torch.ops.cosmos_engine.gate_residual_bwd(grad_out, gate, y, 300))


def test_opcheck():
    x, gate, y = make_inputs((2, 2, 9, 40), torch.float32, "cpu")
    for t in (x, gate, y):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.cosmos_engine.gate_residual_fwd, (x, gate, y, 9))
    torch.library.opcheck(torch.ops.cosmos_engine.gate_residual_bwd, (torch.randn_like(x), gate.detach(), y.detach(), 9))


def test_torch_compile_fullgraph():
    assert_compiles_like_eager(ops.gate_residual, make_inputs((1, 2, 16, 64), torch.float32, "cpu"))


def test_gradcheck_fp64():
    x, gate, y = make_inputs((1, 2, 3, 5), torch.float64, "cpu")
    inputs = tuple(t.requires_grad_() for t in (x, gate, y))
    assert torch.autograd.gradcheck(ops.gate_residual, inputs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(2, 8), torch.randn(2, 1, 8), torch.randn(2, 8)), "'x' must be \\[B, T\\*H\\*W, D\\]"),
        (lambda: (torch.randn(1, 6, 8), torch.randn(1, 4, 8), torch.randn(1, 6, 8)), "not a whole number of tokens per frame"),
        (lambda: (torch.randn(1, 6, 8), torch.randn(1, 2, 9), torch.randn(1, 6, 8)), "'gate' has shape"),
        (lambda: (torch.randn(1, 6, 8), torch.randn(1, 2, 8), torch.randn(1, 6, 9)), "'y' has shape"),
        (lambda: (torch.randn(1, 6, 8).int(), torch.randn(1, 2, 8), torch.randn(1, 6, 8)), "'x' must be float32"),
        (lambda: (torch.randn(1, 6, 8), torch.randn(1, 2, 8, device="meta"), torch.randn(1, 6, 8)), "'gate' is on meta"),
    ],
    ids=["rank", "frames", "gate-dim", "y-shape", "int-dtype", "device"],
)
def test_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.gate_residual(*make())


def test_compiled_op_checks_arguments_too():
    """Called directly (bypassing the Python checks), the C++ entry names the argument."""
    x, y = torch.randn(1, 6, 8), torch.randn(1, 6, 8)
    with pytest.raises(RuntimeError, match="'gate' has 2 frames of 2 tokens = 4 tokens, but argument 'y' has 6"):
        torch.ops.cosmos_engine.gate_residual_fwd(x, torch.randn(1, 2, 8), y, 2)
    with pytest.raises(RuntimeError, match="argument 'y' must be Double"):
        torch.ops.cosmos_engine.gate_residual_bwd(x.double(), torch.randn(1, 2, 8), y, 3)
    with pytest.raises(RuntimeError, match="'gate' must have the dtype of 'x'"):
        torch.ops.cosmos_engine.gate_residual_fwd(x.half(), torch.randn(1, 2, 8).bfloat16(), y.half(), 3)


def test_reference_backend_is_selectable():
    x, gate, y = make_inputs((1, 2, 8, 32), torch.float32, "cpu")
    with ops.force_backend("reference"):
        via_reference = ops.gate_residual(x, gate, y)
    torch.testing.assert_close(via_reference, reference.gate_residual(x, gate, y), atol=0, rtol=0)
    with ops.force_backend("cpu"):
        via_kernel = ops.gate_residual(x, gate, y)
    torch.testing.assert_close(via_kernel, via_reference, atol=1e-5, rtol=1e-5)
