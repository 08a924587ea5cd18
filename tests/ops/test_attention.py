"""attention: our op (CPU kernel) against an fp64 reference, with FlashAttention's tolerance rule (our error
at most twice torch SDPA's same-dtype error, plus a small epsilon), forward and the three gradients; plus
poisoning, opcheck, torch.compile, fp64 gradcheck (through our kernel, which computes fp64 in fp64), bad
inputs, thread-count determinism and the selective-checkpointing save."""

from __future__ import annotations

import copy
import importlib
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import cosmos_engine
from cosmos_engine import ops
from cosmos_engine.ops import reference
from tests.ops.fused import assert_compiles_like_eager, assert_thread_count_does_not_matter, forward_and_grads

pytestmark = pytest.mark.skipif(not cosmos_engine.build_info()["loaded"], reason="the compiled library _C is not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Our error may exceed SDPA's by this much in absolute terms (outputs and gradients are O(1)): a few
# rounding steps of the dtype, for cases where SDPA happens to be nearly exact.
EPS = {torch.float32: 2e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}

# (B, Lq, Lk, H, D): self-attention at 1/8 and 1/4 of a 720p latent frame (3520 tokens), cross-attention
# to 512 and 300 text tokens, L = 1, lengths that are not multiples of the 96-row tiles, B = 2, 16 heads,
# and the head dims 64, 128 and 136 (not a multiple of 16: padded inside).
SHAPES = [
    (1, 440, 440, 2, 128),
    (1, 880, 880, 2, 128),
    (1, 440, 512, 2, 128),
    (2, 200, 300, 2, 64),
    (1, 1, 1, 2, 128),
    (1, 97, 97, 16, 64),
    (2, 150, 150, 2, 136),
]


def make_qkv(shape, dtype, seed=0, fused=False):
    batch, q_len, kv_len, heads, dim = shape
    gen = torch.Generator().manual_seed(seed)
    if fused:  # q, k, v as strided slices of one [B, L, 3, H, D] projection output, as the model makes them
        qkv = torch.randn(batch, q_len, 3, heads, dim, generator=gen).to(dtype)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = torch.randn(batch, q_len, heads, dim, generator=gen).to(dtype)
    k = torch.randn(batch, kv_len, heads, dim, generator=gen).to(dtype)
    v = torch.randn(batch, kv_len, heads, dim, generator=gen).to(dtype)
    return q, k, v


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def ours(q, k, v):
    with ops.force_backend("cpu"):
        return ops.attention(q, k, v)


def assert_flash_tolerance(q, k, v, dtype):
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    want = forward_and_grads(reference.attention, (q.double(), k.double(), v.double()), grad_out.double())
    got = forward_and_grads(ours, (q, k, v), grad_out)
    torch_same_dtype = forward_and_grads(sdpa, (q, k, v), grad_out)
    names = ("out", "dq", "dk", "dv")
    flat = lambda r: (r[0], *r[1])  # noqa: E731
    for name, g, w, t in zip(names, flat(got), flat(want), flat(torch_same_dtype)):
        assert g.dtype == dtype and g.shape == w.shape, name
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        ours_err = (g.double() - w).abs().max().item()
        torch_err = (t.double() - w).abs().max().item()
        assert ours_err <= 2 * torch_err + EPS[dtype], f"{name}: error {ours_err:.3g} vs SDPA's {torch_err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_fp64_within_twice_sdpa_error(shape, dtype):
    assert_flash_tolerance(*make_qkv(shape, dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_slices_of_a_fused_qkv(dtype):
    q, k, v = make_qkv((2, 130, 130, 2, 64), dtype, fused=True)
    assert not q.is_contiguous() and q.stride(1) == 3 * 2 * 64
    assert_flash_tolerance(q, k, v, dtype)


def test_poisoned_outputs_are_fully_written():
    assert os.environ["COSMOS_ENGINE_POISON_OUTPUTS"] == "1"
    q, k, v = make_qkv((2, 97, 41, 3, 72), torch.float32)
    out, lse = torch.ops.cosmos_engine.attention_fwd(q, k, v)
    grads = torch.ops.cosmos_engine.attention_bwd(torch.randn_like(out), q, k, v, out, lse)
    for t in (out, lse, *grads):
        assert torch.isfinite(t).all()
    assert lse.shape == (2, 3, 97) and lse.dtype == torch.float32


def test_lse_is_the_log_sum_exp_of_the_scores():
    q, k, v = make_qkv((1, 50, 70, 2, 32), torch.float32)
    _out, lse = torch.ops.cosmos_engine.attention_fwd(q, k, v)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * 32**-0.5
    torch.testing.assert_close(lse.double(), scores.logsumexp(-1), atol=1e-5, rtol=1e-6)


def test_opcheck():
    q, k, v = make_qkv((2, 9, 7, 2, 8), torch.float32)
    torch.library.opcheck(torch.ops.cosmos_engine.attention_fwd, tuple(t.requires_grad_() for t in (q, k, v)))
    out, lse = torch.ops.cosmos_engine.attention_fwd(q.detach(), k.detach(), v.detach())
    torch.library.opcheck(torch.ops.cosmos_engine.attention_bwd,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse))


def test_torch_compile_fullgraph():
    assert_compiles_like_eager(ops.attention, make_qkv((1, 20, 12, 2, 16), torch.float32))


def test_gradcheck_fp64_through_the_kernel():
    q, k, v = make_qkv((1, 5, 3, 2, 8), torch.float64)
    assert torch.autograd.gradcheck(ours, tuple(t.requires_grad_() for t in (q, k, v)), eps=1e-6, atol=1e-8,
                                    fast_mode=True)


def test_same_bits_with_one_and_two_threads():
    # 2 slices and 3 key tiles: the backward splits the keys into 3 chunks whose dQ partials it sums.
    q, k, v = make_qkv((1, 300, 200, 2, 64), torch.float32)
    out, lse = torch.ops.cosmos_engine.attention_fwd(q, k, v)
    grad_out = torch.randn_like(out)
    assert_thread_count_does_not_matter(lambda: torch.ops.cosmos_engine.attention_fwd(q, k, v))
    assert_thread_count_does_not_matter(
        lambda: torch.ops.cosmos_engine.attention_bwd(grad_out, q, k, v, out, lse))


def test_unsupported_head_dim_uses_the_reference():
    q, k, v = make_qkv((1, 6, 5, 2, 12), torch.float32)
    torch.testing.assert_close(ops.attention(q, k, v), reference.attention(q, k, v), atol=0, rtol=0)


def test_reference_backend_is_the_explicit_softmax():
    q, k, v = make_qkv((1, 30, 20, 2, 32), torch.float32)
    with ops.force_backend("reference"):
        via_reference = ops.attention(q, k, v)
    torch.testing.assert_close(via_reference, reference.attention(q, k, v), atol=0, rtol=0)
    torch.testing.assert_close(ours(q, k, v), via_reference, atol=1e-6, rtol=1e-5)


def test_sdpa_on_cpu_runs_torch_sdpa_instead_of_the_kernel():
    q, k, v = make_qkv((1, 30, 20, 2, 32), torch.float32)
    with importlib.import_module("cosmos_engine.ops.attention").sdpa_on_cpu():
        got = ops.attention(q, k, v)
    torch.testing.assert_close(got, sdpa(q, k, v), atol=0, rtol=0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(2, 3, 8), torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8)), "'q' must be \\[B, L, heads"),
        (lambda: (torch.randn(2, 3, 1, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 1, 8)), "'k' must be \\[B, L, heads"),
        (lambda: (torch.randn(2, 3, 1, 8), torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8)), "'k' has shape"),
        (lambda: (torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8), torch.randn(2, 4, 1, 8)), "'v' has shape"),
        (lambda: (torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8).double(), torch.randn(2, 3, 1, 8)), "'k' is torch.float64"),
        (lambda: (torch.randn(2, 3, 1, 8).int(), torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8)), "'q' must be float32"),
        (lambda: (torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8, device="meta")), "'v' is on meta"),
        (lambda: (torch.randn(2, 3, 1, 8), torch.randn(2, 0, 1, 8), torch.randn(2, 0, 1, 8)), "at least one token"),
    ],
    ids=["rank-q", "rank-k", "batch", "v-shape", "dtype-mix", "int-dtype", "device-mix", "empty-k"],
)
def test_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.attention(*make())


def test_compiled_op_checks_arguments_too():
    q, k, v = make_qkv((1, 4, 4, 2, 12), torch.float32)
    with pytest.raises(RuntimeError, match="head dimension of 'q' must be a multiple of 8"):
        torch.ops.cosmos_engine.attention_fwd(q, k, v)
    q, k, v = make_qkv((1, 4, 4, 2, 16), torch.float32)
    with pytest.raises(RuntimeError, match="argument 'v' must be Float"):
        torch.ops.cosmos_engine.attention_fwd(q, k, v.double())


class CountAttentionForward(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) == "cosmos_engine.attention_fwd.default":
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode, runs_per_call", [("selective", 1), ("full", 2)])
def test_selective_checkpointing_saves_the_attention_outputs(mode, runs_per_call):
    """One tiny-DiT training step: under "selective" our attention op runs once per attention call (its
    outputs are saved), under "full" twice (recomputed in backward)."""
    from cosmos_engine.models.cosmos_dit import CosmosDiT
    from cosmos_engine.models.flavors import dit_config
    from cosmos_engine.parallel.parallelize import apply_activation_checkpointing

    torch.manual_seed(0)
    net = CosmosDiT(dit_config("tiny"))
    net.init_weights()
    wrapped = apply_activation_checkpointing(copy.deepcopy(net), mode)
    gen = torch.Generator().manual_seed(1)
    inputs = {"x_B_C_T_H_W": torch.randn(1, 16, 2, 8, 12, generator=gen), "timesteps_B_T": torch.tensor([[0.1, 640.0]]),
              "crossattn_emb": torch.randn(1, 5, 96, generator=gen)}
    counter = CountAttentionForward()
    with counter:
        wrapped(**inputs).square().mean().backward()
    attention_calls = 2 * len(net.blocks)  # self- and cross-attention per block
    assert counter.calls == runs_per_call * attention_calls


def test_cuda_sdpa_path_math_on_cpu_tensors(monkeypatch):
    """The CUDA implementation's SDPA path (never run on a GPU here) is torch ops only: run it on CPU
    tensors, with chunks small enough to split the queries, against the fp64 reference."""
    attention_module = importlib.import_module("cosmos_engine.ops.attention")  # ops.attention is the function
    monkeypatch.setattr(attention_module, "_LSE_CHUNK_ELEMENTS", 2 * 2 * 40 * 37)
    q, k, v = make_qkv((2, 101, 37, 2, 24), torch.float64)
    out, lse = attention_module._cuda_fwd(q, k, v)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * 24**-0.5
    torch.testing.assert_close(out, reference.attention(q, k, v))
    torch.testing.assert_close(lse, scores.logsumexp(-1))
    grad_out = torch.randn_like(q)
    _, want = forward_and_grads(reference.attention, (q, k, v), grad_out)
    for got, expected in zip(attention_module._cuda_bwd(grad_out, q, k, v, out, lse), want):
        torch.testing.assert_close(got, expected)
