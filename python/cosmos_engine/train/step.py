"""One rectified-flow training step's forward: the random draws, the network call and the loss.

The draws are made in the official order on one CPU `torch.Generator` (eps, then the logit-normal time,
then the number of condition frames, then the text dropout), so a resumed run that restores the
generator state draws exactly the numbers the uninterrupted run would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cosmos_engine.train import flow_matching as fm


@dataclass(frozen=True)
class StepDraws:
    eps: torch.Tensor                    # [B, C, T, H, W] noise, float32
    u: torch.Tensor                      # [B] logit-normal time in (0, 1)
    num_conditional_frames: torch.Tensor  # [B] 0, 1 or 2
    keep_text: torch.Tensor              # [B] 1.0 keeps the prompt, 0.0 drops it (classifier-free guidance)


def draw(generator: torch.Generator, latent_shape: torch.Size, text_dropout: float,
         conditional_frames_probs: dict[int, float] = fm.CONDITIONAL_FRAMES_PROBS) -> StepDraws:
    batch = latent_shape[0]
    eps = torch.randn(latent_shape, generator=generator)
    u = fm.sample_u(batch, generator)
    frames = fm.sample_num_conditional_frames(batch, generator, conditional_frames_probs)
    keep = torch.bernoulli(torch.full((batch,), 1.0 - text_dropout), generator=generator)
    return StepDraws(eps, u, frames, keep)


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
