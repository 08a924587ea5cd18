"""Run by test_context_parallel.py under torchrun: the tiny DiT on 2 ranks with context parallelism
(`dit OUT`), or the exchanges alone on any number of ranks (`exchanges OUT`)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from cosmos_engine.models.cosmos_dit import CosmosDiT
from cosmos_engine.models.flavors import dit_config
from cosmos_engine.parallel import context_parallel


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same net and inputs on every rank
    net = CosmosDiT(dit_config("tiny"))
    net.init_weights()
    with torch.no_grad():
        for p in net.parameters():  # every weight non-trivial (the official init zeroes some)
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if p.dim() == 1 else 0.0))
    gen = torch.Generator().manual_seed(1)
    batch, frames, height, width = 2, 4, 6, 10
    inputs = {
        "x_B_C_T_H_W": torch.randn(batch, 16, frames, height, width, generator=gen),
        "timesteps_B_T": torch.tensor([[100.0, 100.0, 500.0, 999.0], [3.0, 250.0, 250.0, 250.0]]),
        "crossattn_emb": torch.randn(batch, 7, 96, generator=gen),
        "condition_video_input_mask_B_C_T_H_W": (torch.arange(frames) < 1).float().view(1, 1, frames, 1, 1)
        .expand(batch, 1, frames, height, width).contiguous(),
    }
    with torch.no_grad():
        whole = net(**inputs)
        net.enable_context_parallel(dist.group.WORLD)
        split = net(**inputs)
        shared = net(**{**inputs, "timesteps_B_T": inputs["timesteps_B_T"][:, :1]})
        net.disable_context_parallel()
        shared_whole = net(**{**inputs, "timesteps_B_T": inputs["timesteps_B_T"][:, :1]})
    errors = {}
    net.enable_context_parallel(dist.group.WORLD)
    try:
        net(**inputs)
    except RuntimeError as exc:
        errors["grad"] = str(exc)
    with torch.no_grad():
        try:
            net(**{**inputs, "x_B_C_T_H_W": inputs["x_B_C_T_H_W"][:, :, :3],
                   "condition_video_input_mask_B_C_T_H_W": None, "timesteps_B_T": inputs["timesteps_B_T"][:, :1]})
        except ValueError as exc:
            errors["frames"] = str(exc)
    if dist.get_rank() == 0:
        torch.save({"whole": whole, "split": split, "shared": shared, "shared_whole": shared_whole,
                    "errors": errors}, out_path)
    dist.barrier()
    dist.destroy_process_group()


def exchanges(out_path: str) -> None:
    """tokens_to_heads / heads_to_tokens against slices of the whole tensor, 2 heads per rank."""
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    whole = torch.randn(2, 5 * size, 2 * size, 4, generator=torch.Generator().manual_seed(3))  # [B, L, H, d]
    tokens = whole.shape[1] // size
    mine = whole[:, rank * tokens:(rank + 1) * tokens]  # my tokens, all heads
    heads = context_parallel.tokens_to_heads(mine, dist.group.WORLD)
    back = context_parallel.heads_to_tokens(heads, dist.group.WORLD)
    gathered = context_parallel.gather_tokens(mine.flatten(2), dist.group.WORLD)
    ok = (torch.equal(heads, whole[:, :, 2 * rank:2 * rank + 2]) and torch.equal(back, mine)
          and torch.equal(gathered, whole.flatten(2)))
    results = [None] * size
    dist.all_gather_object(results, ok)
    if rank == 0:
        torch.save({"ok": results}, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    {"dit": main, "exchanges": exchanges}[sys.argv[1]](sys.argv[2])
