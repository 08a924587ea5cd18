"""Context parallelism (Ulysses) for sampling: the ranks of a group split one video's latent frames.

Each rank keeps a contiguous block of T/cp latent frames (all their tokens). Everything in the DiT is
per token except self-attention, which needs every token: before it, an all-to-all turns "my tokens, all
heads" into "all tokens, my heads" (q, k, v [B, L/cp, H, d] -> [B, L, H/cp, d]); after it, the inverse
exchange restores "my tokens, all heads". Cross-attention, the MLP and the modulation stay local. The
network's output tokens are all-gathered at the end, so every rank returns the whole velocity and the
sampler, which is element-wise, runs unchanged (and identically) on every rank.

Sampling only: the exchanges have no backward here, and the DiT refuses context parallelism with
gradients enabled (the NeMo post-training recipe uses none: context_parallel_size = 1).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def frame_range(frames: int, group: dist.ProcessGroup) -> tuple[int, int]:
    """This rank's latent frames [start, stop) of `frames`, which must divide evenly."""
    size, rank = group.size(), group.rank()
    if frames % size:
        raise ValueError(f"context parallelism over {size} ranks needs a latent frame count divisible by {size}, "
                         f"got {frames} (choose num_frames = 1 + 4k with {size} | (k + 1))")
    per_rank = frames // size
    return rank * per_rank, (rank + 1) * per_rank


def tokens_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[B, L/cp, H, d] (my tokens, all heads) -> [B, L, H/cp, d] (all tokens in rank order, my heads)."""
    size = group.size()
    batch, tokens, heads, dim = x.shape
    if heads % size:
        raise ValueError(f"context parallelism over {size} ranks needs a head count divisible by {size}, got {heads}")
    send = x.reshape(batch, tokens, size, heads // size, dim).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(send)  # received[j]: rank j's tokens of my heads
    dist.all_to_all_single(received, send, group=group)
    return received.permute(1, 0, 2, 3, 4).reshape(batch, size * tokens, heads // size, dim)


def heads_to_tokens(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """The inverse of `tokens_to_heads`: [B, L, H/cp, d] -> [B, L/cp, H, d]."""
    size = group.size()
    batch, tokens, heads, dim = x.shape
    send = x.reshape(batch, size, tokens // size, heads, dim).permute(1, 0, 2, 3, 4).contiguous()
    received = torch.empty_like(send)  # received[j]: my tokens of rank j's heads
    dist.all_to_all_single(received, send, group=group)
    return received.permute(1, 2, 0, 3, 4).reshape(batch, tokens // size, size * heads, dim)


def gather_tokens(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Every rank's [B, L/cp, C] block, concatenated in rank order: [B, L, C] on every rank."""
    parts = [torch.empty_like(x) for _ in range(group.size())]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)
