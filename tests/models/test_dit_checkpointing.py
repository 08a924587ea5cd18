"""Activation checkpointing of the DiT: every block and the final layer wrapped, gradients unchanged,
state-dict keys clean, and "selective" really keeping the attention outputs (no attention recompute)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.utils._python_dispatch import TorchDispatchMode

from cosmos_engine.models.cosmos_dit import CosmosDiT
from cosmos_engine.models.flavors import dit_config
from cosmos_engine.parallel.parallelize import apply_activation_checkpointing, is_attention_op


class CountAttention(TorchDispatchMode):
    """Counts forward attention kernels dispatched (backward kernels excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if is_attention_op(func) and "backward" not in str(func):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def net() -> CosmosDiT:
    model = CosmosDiT(dit_config("tiny"))
    model.init_weights()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / (p.shape[-1] ** 0.5 if p.dim() > 1 else 10))
    return model


def inputs() -> dict:
    gen = torch.Generator().manual_seed(1)
    return {
        "x_B_C_T_H_W": torch.randn(1, 16, 2, 8, 12, generator=gen),
        "timesteps_B_T": torch.tensor([[0.1, 640.0]]),
        "crossattn_emb": torch.randn(1, 5, 96, generator=gen),
    }


def forward_backward(model: CosmosDiT) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients by official state-dict name, and the number of forward attention calls (incl. recompute)."""
    counter = CountAttention()
    with counter:
        model(**inputs()).square().sum().backward()
    clean = {name.replace("._checkpoint_wrapped_module", ""): p.grad for name, p in model.named_parameters()}
    return clean, counter.calls


@pytest.mark.parametrize("mode, recomputes_attention", [("full", True), ("selective", False)])
def test_checkpointing_wraps_every_block_and_keeps_gradients(net, mode, recomputes_attention):
    plain = copy.deepcopy(net)
    wrapped = apply_activation_checkpointing(copy.deepcopy(net), mode)
    assert all(isinstance(block, CheckpointWrapper) for block in wrapped.blocks)
    assert isinstance(wrapped.final_layer, CheckpointWrapper)

    expected, plain_calls = forward_backward(plain)
    got, wrapped_calls = forward_backward(wrapped)
    assert plain_calls == 2 * len(net.blocks)
    assert wrapped_calls == plain_calls * (2 if recomputes_attention else 1)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_state_dict_keys_stay_clean(net):
    wrapped = apply_activation_checkpointing(copy.deepcopy(net), "selective")
    assert list(wrapped.state_dict()) == list(net.state_dict())
    fresh = apply_activation_checkpointing(CosmosDiT(dit_config("tiny")), "full")
    fresh.load_state_dict(net.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))


def test_none_is_a_no_op_and_bad_modes_fail(net):
    model = copy.deepcopy(net)
    assert apply_activation_checkpointing(model, "none") is model
    assert not any(isinstance(m, CheckpointWrapper) for m in model.modules())
    with pytest.raises(ValueError, match="activation_checkpointing must be one of"):
        apply_activation_checkpointing(model, "aggressive")
    apply_activation_checkpointing(model, "full")
    with pytest.raises(ValueError, match="already wrapped"):
        apply_activation_checkpointing(model, "selective")
