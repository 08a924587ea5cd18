"""One rectified-flow training step's forward: the random draws, the network call and the loss.

Each sample's draws (eps, then the logit-normal time, then the number of condition frames, then the text
dropout: the official order) come from a CPU `torch.Generator` seeded from (run seed, step, global sample
index). So the numbers depend only on which sample of which step they are for: a resumed run draws exactly
what the uninterrupted run would have, and N ranks with batch b draw what one rank with batch N*b does,
which makes multi-rank runs reproduce single-rank ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cosmos_engine.train import flow_matching as fm


@dataclass(frozen=True)
class StepDraws:
    eps: torch.Tensor                    # [B, C, T, H, W] noise, float32
    u: torch.Tensor                      # [B] logit-normal time in (0, 1)
    num_conditional_frames: torch.Tensor  # [B] 0, 1 or 2
    keep_text: torch.Tensor              # [B] 1.0 keeps the prompt, 0.0 drops it (classifier-free guidance)


def sample_generator(seed: int, step: int, sample_index: int) -> torch.Generator:
    """The generator of one sample of one step, from (seed, step, global sample index)."""
    words = np.random.SeedSequence([seed, step, sample_index]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(words[0]))


def draw(generator: torch.Generator, latent_shape: torch.Size, text_dropout: float,
         conditional_frames_probs: dict[int, float] = fm.CONDITIONAL_FRAMES_PROBS) -> StepDraws:
    """All draws of a batch from one generator, in the official order."""
    batch = latent_shape[0]
    eps = torch.randn(latent_shape, generator=generator)
    u = fm.sample_u(batch, generator)
    frames = fm.sample_num_conditional_frames(batch, generator, conditional_frames_probs)
    keep = torch.bernoulli(torch.full((batch,), 1.0 - text_dropout), generator=generator)
    return StepDraws(eps, u, frames, keep)


def draw_for_samples(seed: int, step: int, sample_indices: list[int], latent_shape: torch.Size,
                     text_dropout: float,
                     conditional_frames_probs: dict[int, float] = fm.CONDITIONAL_FRAMES_PROBS) -> StepDraws:
    """The draws of the given global samples of `step`, each from its own generator, stacked as a batch."""
    per_sample = [draw(sample_generator(seed, step, i), (1, *latent_shape[1:]), text_dropout, conditional_frames_probs)
                  for i in sample_indices]
    return StepDraws(*(torch.cat(parts) for parts in zip(*(vars(d).values() for d in per_sample))))


def forward_loss(net: nn.Module, x0: torch.Tensor, text: torch.Tensor, draws: StepDraws,
                 padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, v_pred) for clean latents x0 [B, C, T, H, W] (float32) and raw text embeddings [B, N, C_text].

    v_pred is the network output with the condition frames overwritten by the target, as the official
    `denoise` returns it."""
    device = x0.device
    batch = fm.make_noised_batch(x0, draws.eps.to(device), draws.u, draws.num_conditional_frames)
    text = text * draws.keep_text.to(device=device, dtype=text.dtype).reshape(-1, *([1] * (text.dim() - 1)))
    v_net = net(x_B_C_T_H_W=batch.x_in, timesteps_B_T=batch.timesteps, crossattn_emb=text,
                condition_video_input_mask_B_C_T_H_W=batch.mask, padding_mask=padding_mask).float()
    v_pred = v_net * (1 - batch.mask) + batch.target * batch.mask
    return fm.loss(v_net, batch), v_pred
