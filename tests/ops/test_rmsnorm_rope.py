"""rmsnorm_rope: the compiled kernels against the PyTorch reference (ops/reference.py), and the reference
against the DiT's unfused RMSNorm + RoPE."""

from __future__ import annotations

import os

import pytest
import torch

import cosmos_engine
from cosmos_engine import ops
from cosmos_engine.models.cosmos_dit import RMSNorm
from cosmos_engine.ops import reference
from tests.ops.fused import (
    assert_close, assert_compiles_like_eager, assert_thread_count_does_not_matter, forward_and_grads)
from tests.tolerances import ELEMENTWISE, reduction_atol

pytestmark = pytest.mark.skipif(not cosmos_engine.build_info()["loaded"], reason="the compiled library _C is not built")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (B, L, heads, head_dim): the 2B model's heads scaled down, plus odd sizes.
SHAPES = [
    (1, 300, 16, 128),   # the 2B head layout
    (2, 37, 3, 128),     # B = 2, few heads
    (1, 50, 2, 96),      # half the head dim not a multiple of 32 (CUDA lanes)
    (2, 5, 4, 10),       # tiny head dim
]


def make_inputs(shape, dtype, device, weight_dtype=None, rope=True, seed=0):
    batch, tokens, heads, dim = shape
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, tokens, heads, dim, generator=gen) * 3 + 0.2).to(device, dtype)
    weight = (1 + 0.1 * torch.randn(dim, generator=gen)).to(device, weight_dtype or dtype)
    acc = reference.acc_dtype(dtype)
    if not rope:
        return x, weight, None, None
    # Independent angles in both halves: the model's tables repeat theirs, but a kernel that mixed up the
    # lo and hi halves of cos/sin would pass on such a table.
    angles = torch.rand(tokens, dim, generator=gen, dtype=torch.float64) * 50
    return x, weight, angles.cos().to(device, acc), angles.sin().to(device, acc)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rope", [True, False], ids=["rope", "norm-only"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_match_reference(shape, dtype, rope, device):
    x, weight, cos, sin = make_inputs(shape, dtype, device, rope=rope)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, (grad_x, grad_weight) = forward_and_grads(ops.rmsnorm_rope, (x, weight), grad_out, cos, sin)
    ref_out, (ref_grad_x, ref_grad_weight) = forward_and_grads(
        reference.rmsnorm_rope, (x.float(), weight.float()), grad_out.float(), cos, sin)
    atol, rtol = ELEMENTWISE[dtype]
    assert out.dtype == grad_x.dtype == grad_weight.dtype == dtype
    assert_close(out.float(), ref_out, atol, rtol, "out")
    assert_close(grad_x.float(), ref_grad_x, atol, rtol, "grad_x")
    rows = shape[0] * shape[1] * shape[2]
    red_atol = reduction_atol(torch.float32, rows) * ref_grad_weight.abs().max().item() + atol
    assert_close(grad_weight.float(), ref_grad_weight, red_atol, rtol, "grad_weight")


def test_reference_equals_the_official_unfused_path():
    """The op's specification is the official q_norm (TransformerEngine RMSNorm, the DiT's `RMSNorm`) then
    rotate-half RoPE, written out here as the official does it, in fp32 (where nothing is rounded between)."""
    x, weight, cos, sin = make_inputs((2, 12, 4, 16), torch.float32, "cpu")
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.copy_(weight)
        normed = norm(x)
        first, second = normed.chunk(2, dim=-1)
        rotated = normed * cos[:, None] + torch.cat((-second, first), dim=-1) * sin[:, None]
        torch.testing.assert_close(reference.rmsnorm_rope(x, weight, cos, sin), rotated, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(reference.rmsnorm_rope(x, weight), normed, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_weight_with_bf16_activations(device):
    x, weight, cos, sin = make_inputs((1, 64, 4, 128), torch.bfloat16, device, weight_dtype=torch.float32)
    grad_out = torch.randn(x.shape, dtype=torch.bfloat16, device=device)
    out, grads = forward_and_grads(ops.rmsnorm_rope, (x, weight), grad_out, cos, sin)
    ref_out, ref_grads = forward_and_grads(reference.rmsnorm_rope, (x.float(), weight), grad_out.float(), cos, sin)
    assert out.dtype == torch.bfloat16 and grads[1].dtype == torch.float32
    atol, rtol = ELEMENTWISE[torch.bfloat16]
    assert_close(out.float(), ref_out, atol, rtol, "out")
    assert_close(grads[1], ref_grads[1], reduction_atol(torch.float32, 256) * ref_grads[1].abs().max().item() + atol,
                 rtol, "grad_weight")


def test_non_contiguous_input():
    """q as a view of a fused qkv projection output."""
    qkv = torch.randn(2, 9, 3, 4, 32)
    x = qkv[:, :, 0]
    assert not x.is_contiguous()
    _, weight, cos, sin = make_inputs((2, 9, 4, 32), torch.float32, "cpu")
    grad_out = torch.randn(2, 9, 4, 32)
    out, grads = forward_and_grads(ops.rmsnorm_rope, (x, weight), grad_out, cos, sin)
    ref_out, ref_grads = forward_and_grads(reference.rmsnorm_rope, (x, weight), grad_out, cos, sin)
    atol, rtol = ELEMENTWISE[torch.float32]
    assert_close(out, ref_out, atol, rtol, "out")
    assert_close(grads[0], ref_grads[0], atol, rtol, "grad_x")


def test_poisoned_outputs_are_fully_written():
    assert os.environ["COSMOS_ENGINE_POISON_OUTPUTS"] == "1"
    for rope in (True, False):
        x, weight, cos, sin = make_inputs((2, 70, 3, 64), torch.float32, "cpu", rope=rope)
        out, rstd = torch.ops.cosmos_engine.rmsnorm_rope_fwd(x, weight, cos, sin, 1e-6)
        grads = torch.ops.cosmos_engine.rmsnorm_rope_bwd(torch.randn_like(x), x, weight, cos, sin, rstd)
        for t in (out, rstd, *grads):
            assert torch.isfinite(t).all()


def test_backward_is_deterministic():
    x, weight, cos, sin = make_inputs((1, 300, 8, 128), torch.float32, "cpu")
    _out, rstd = torch.ops.cosmos_engine.rmsnorm_rope_fwd(x, weight, cos, sin, 1e-6)
    grad_out = torch.randn_like(x)
    assert_thread_count_does_not_matter(
        lambda: torch.ops.cosmos_engine.rmsnorm_rope_bwd(grad_out, x, weight, cos, sin, rstd))


def test_opcheck():
    x, weight, cos, sin = make_inputs((2, 9, 2, 8), torch.float32, "cpu")
    x.requires_grad_()
    weight.requires_grad_()
    for table in ((cos, sin), (None, None)):
        torch.library.opcheck(torch.ops.cosmos_engine.rmsnorm_rope_fwd, (x, weight, *table, 1e-6))
        out, rstd = torch.ops.cosmos_engine.rmsnorm_rope_fwd(x.detach(), weight.detach(), *table, 1e-6)
        torch.library.opcheck(torch.ops.cosmos_engine.rmsnorm_rope_bwd,
                              (torch.randn_like(out), x.detach(), weight.detach(), *table, rstd))


def test_torch_compile_fullgraph():
    x, weight, cos, sin = make_inputs((1, 16, 2, 32), torch.float32, "cpu")
    assert_compiles_like_eager(ops.rmsnorm_rope, (x, weight), cos, sin)


@pytest.mark.parametrize("rope", [True, False], ids=["rope", "norm-only"])
def test_gradcheck_fp64(rope):
    x, weight, cos, sin = make_inputs((1, 3, 2, 6), torch.float64, "cpu", rope=rope)
    assert torch.autograd.gradcheck(lambda x, w: ops.rmsnorm_rope(x, w, cos, sin),
                                    (x.requires_grad_(), weight.requires_grad_()), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(2, 3, 8), torch.ones(8), None, None), "'x' must be \\[B, L, heads, head_dim\\]"),
        (lambda: (torch.randn(1, 3, 2, 7), torch.ones(7), None, None), "must be even"),
        (lambda: (torch.randn(1, 3, 2, 8), torch.ones(6), None, None), "'weight' has shape"),
        (lambda: (torch.randn(1, 3, 2, 8), torch.ones(8), torch.ones(3, 8), None), "both 'cos' and 'sin'"),
        (lambda: (torch.randn(1, 3, 2, 8), torch.ones(8), torch.ones(4, 8), torch.ones(4, 8)), "'cos' has shape"),
        (lambda: (torch.randn(1, 3, 2, 8).int(), torch.ones(8), None, None), "'x' must be float32"),
        (lambda: (torch.randn(1, 3, 2, 8), torch.ones(8, device="meta"), None, None), "'weight' is on meta"),
    ],
    ids=["rank", "odd-dim", "weight-shape", "half-table", "table-shape", "int-dtype", "device"],
)
def test_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.rmsnorm_rope(*make())


def test_compiled_op_checks_arguments_too():
    x = torch.randn(1, 3, 2, 8)
    with pytest.raises(RuntimeError, match="argument 'cos' has size 4 in dimension 0 but the token count of 'x' is 3"):
        torch.ops.cosmos_engine.rmsnorm_rope_fwd(x, torch.ones(8), torch.ones(4, 8), torch.ones(4, 8), 1e-6)
    with pytest.raises(RuntimeError, match="argument 'cos' must be Float"):
        torch.ops.cosmos_engine.rmsnorm_rope_fwd(x, torch.ones(8), torch.ones(3, 8).double(), torch.ones(3, 8).double(), 1e-6)


def test_reference_backend_is_selectable():
    x, weight, cos, sin = make_inputs((1, 8, 2, 32), torch.float32, "cpu")
    with ops.force_backend("reference"):
        via_reference = ops.rmsnorm_rope(x, weight, cos, sin)
    torch.testing.assert_close(via_reference, reference.rmsnorm_rope(x, weight, cos, sin), atol=0, rtol=0)
    with ops.force_backend("cpu"):
        via_kernel = ops.rmsnorm_rope(x, weight, cos, sin)
    torch.testing.assert_close(via_kernel, via_reference, atol=1e-5, rtol=1e-5)
