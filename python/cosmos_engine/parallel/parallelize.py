"""Activation checkpointing and FSDP2 sharding of the DiT.

Activation checkpointing is switched by the recipe's `[model] activation_checkpointing`. Modes:
* "none": every activation is kept for backward.
* "full": each block (and the final layer) keeps only its inputs; backward recomputes its forward.
* "selective": as "full", but the outputs of the attention kernels are kept. Attention is most of the
  FLOPs at video lengths (about 85 % at 720p) while its output is only [B, L, D], so backward recomputes
  just the cheap ops. The official 2B recipe's policy ("predict2_2b_720_aggressive") means the same but
  matches only FlashAttention op names, so under SDPA it recomputes everything; ours recognises every
  attention op `ops.attention` can dispatch to: our `cosmos_engine::attention_fwd`, which is the same op on
  the CPU (our kernel) and on CUDA (flash-attn-4 or SDPA inside it), and SDPA/flash-attn ops for the rest.

The wrapper is torch's `checkpoint_wrapper` (non-reentrant, RNG state not preserved: the DiT has no
dropout), placed on every block and the final layer as the official network does. `state_dict()` keys stay
the official ones (the wrapper strips its `_checkpoint_wrapped_module.` prefix and adds it back on load);
`named_parameters()` names do show the prefix.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

Mode = Literal["none", "full", "selective"]
MODES: tuple[Mode, ...] = ("none", "full", "selective")


def is_attention_op(func) -> bool:
    """Whether a dispatched op is a forward attention kernel whose outputs selective checkpointing keeps
    (`cosmos_engine.attention_fwd` on every device; backward ops are not forward calls)."""
    name = str(func)
    if "backward" in name or "_bwd" in name:
        return False
    return (name.startswith("aten._scaled_dot_product_") or "flash_attn" in name
            or (name.startswith("cosmos_engine.") and "attention" in name))


def _save_attention_outputs(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if is_attention_op(func) else CheckpointPolicy.PREFER_RECOMPUTE


def apply_activation_checkpointing(model: nn.Module, mode: Mode) -> nn.Module:
    """Wrap every entry of `model.blocks` and `model.final_layer` for activation checkpointing, in place.

    Returns `model`. Wrapping a model twice is an error."""
    if mode not in MODES:
        raise ValueError(f"activation_checkpointing must be one of {MODES}, got {mode!r}")
    if mode == "none":
        return model
    if any(isinstance(m, CheckpointWrapper) for m in model.modules()):
        raise ValueError("apply_activation_checkpointing: the model is already wrapped")
    kwargs = {"preserve_rng_state": False}
    if mode == "selective":
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _save_attention_outputs)
    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block, **kwargs)
    model.final_layer = checkpoint_wrapper(model.final_layer, **kwargs)
    return model


def _mesh(world_size: int, device: torch.device, max_shard: int):
    shard = min(max_shard, world_size)
    if world_size % shard:
        raise ValueError(f"world size {world_size} is not a multiple of the shard size {shard}")
    return init_device_mesh(device.type, (world_size // shard, shard), mesh_dim_names=("replicate", "shard"))


def apply_fsdp(model: nn.Module, world_size: int, device: torch.device, max_shard: int = 8) -> nn.Module:
    """FSDP2 as the official 2B recipe shards the DiT: a (replicate, shard) mesh with shard = min(8, world),
    `fully_shard` on every block (the last one kept unsharded after forward, since backward needs it
    first), on the final layer and on the timestep MLP, then on the root (patch embedding, text
    projection, norms). Call after activation checkpointing. Returns `model`, sharded in place."""
    mesh = _mesh(world_size, device, max_shard)
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model.final_layer, mesh=mesh)
    # The forward calls the timestep MLP module itself (not the t_embedder Sequential), so that is the unit.
    fully_shard(model.t_embedder[1], mesh=mesh, reshard_after_forward=False)
    fully_shard(model, mesh=mesh)
    return model


def apply_fsdp_flat(model: nn.Module, world_size: int, device: torch.device, max_shard: int = 8) -> nn.Module:
    """FSDP2 on the root only, on the mesh `apply_fsdp` uses: for modules that are never run, such as a LoRA
    run's EMA of the adapters, whose shards then sit where the net's adapter shards are. Returns `model`."""
    fully_shard(model, mesh=_mesh(world_size, device, max_shard))
    return model
