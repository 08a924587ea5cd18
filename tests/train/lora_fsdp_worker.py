"""The LoRA FSDP2 check of test_lora.py: `lora_model` and `lora_steps` build and train the tiny LoRA DiT the
same way in one process (batch 2) and, run as a script under torchrun, on 2 ranks (batch 1 each), where
rank 0 writes the full state, the losses and what it saw of the shards to OUT (and one step with a bf16 base:
fp32 adapters in the same FSDP groups as bf16 weights)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from cosmos_engine.config.schema import LoraConfig, ModelConfig, TrainConfig
from cosmos_engine.parallel.distributed import (
    Distributed,
    setup_distributed,
    shutdown_distributed,
)
from cosmos_engine.train import ema as ema_lib
from cosmos_engine.train import optim
from cosmos_engine.train import step as step_lib
from cosmos_engine.train.trainer import build_model
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.tensor import DTensor

LORA = LoraConfig(enabled=True, rank=8, alpha=16.0)
SAMPLES = 2  # the global batch


def lora_model(dist_info: Distributed, dtype: str = "float32"):
    model_cfg = ModelConfig(flavor="tiny", dtype=dtype, activation_checkpointing="none")
    train_cfg = TrainConfig(precision="bf16" if dtype == "bfloat16" else "fp32")
    return build_model(model_cfg, train_cfg, dist_info, seed=0, lora_cfg=LORA)


def lora_steps(model, dist_info: Distributed, steps: int = 3) -> list[float]:
    """`steps` optimizer steps on this rank's share of the SAMPLES samples; the global mean loss of each."""
    opt = optim.build_optimizer(model.net.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3)
    mine = list(range(SAMPLES))[dist_info.rank::dist_info.world_size]
    gens = [torch.Generator().manual_seed(100 + i) for i in mine]
    x0 = torch.cat([torch.randn(1, 16, 3, 8, 8, generator=g) for g in gens])
    text = torch.cat([torch.randn(1, 8, 96, generator=g) for g in gens])
    losses = []
    for iteration in range(steps):
        draws = step_lib.draw_for_samples(0, iteration, mine, x0.shape, 0.2)
        loss, _ = step_lib.forward_loss(model.net, x0, text, draws)
        loss.backward()
        optim.clip_grad_norm(list(model.net.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_lib.update_ema(model.net_ema, model.net, ema_lib.ema_beta(iteration))
        value = loss.detach().clone()
        if dist.is_initialized():
            dist.all_reduce(value)
            value /= dist.get_world_size()
        losses.append(value.item())
    return losses


def main(out: str) -> None:
    dist_info = setup_distributed()
    model = lora_model(dist_info)
    adapters = [p for p in model.net.parameters() if p.requires_grad]
    shards = {"adapters_dtensor": all(isinstance(p, DTensor) for p in adapters),
              "ema_dtensor": all(isinstance(p, DTensor) for p in model.net_ema.parameters()),
              "adapter_local": sum(p.to_local().numel() for p in adapters),
              "adapter_total": sum(p.numel() for p in adapters)}
    losses = lora_steps(model, dist_info)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    bf16_losses = lora_steps(lora_model(dist_info, dtype="bfloat16"), dist_info, steps=1)
    if dist_info.is_main:
        torch.save({"state": state, "losses": losses, "shards": shards, "bf16_losses": bf16_losses}, out)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
