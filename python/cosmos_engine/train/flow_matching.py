"""The rectified-flow training objective of the official Video2World 2B recipe, as pure functions.

Conventions (the official ones): sigma = 1 is pure noise, x_t = sigma * eps + (1 - sigma) * x0, the
network predicts the velocity v = eps - x0 and the loss is the plain mean squared error over everything,
condition frames included (where the prediction is overwritten by the target, so they contribute 0).

Time sampling: u = sigmoid(z), z ~ N(0, 1), one per sample; k = floor(1000 u) indexes the 1000-entry
table of diffusers' FlowMatchEulerDiscreteScheduler(shift=5): s_k = (1000 - k) / 1000,
sigma_k = 5 s_k / (1 + 4 s_k), timestep_k = 1000 sigma_k (float32). sigma is never 0.

Every random draw takes an explicit torch.Generator, so a resumed run draws the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000
SHIFT = 5.0
CONDITIONAL_FRAMES_PROBS = {0: 0.5, 1: 0.25, 2: 0.25}


def shift_sigma(s: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    """The time shift of the official schedule: shift * s / (1 + (shift - 1) * s)."""
    return shift * s / (1 + (shift - 1) * s)


def training_table(shift: float = SHIFT, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas, timesteps), float32 [num_timesteps], descending from sigma 1.

    Built as diffusers builds it: the unshifted timesteps 1000..1 in float32, divided by 1000, shifted,
    and timesteps = sigmas * 1000 (all float32), so the values match the official table bit for bit."""
    timesteps = torch.linspace(1, num_timesteps, num_timesteps, dtype=torch.float32).flip(0)
    sigmas = shift_sigma(timesteps / num_timesteps, shift)
    return sigmas, sigmas * num_timesteps


def sample_u(batch: int, generator: torch.Generator) -> torch.Tensor:
    """u = sigmoid(z), z ~ N(0, 1) on the CPU generator: the logit-normal time of each sample."""
    return torch.sigmoid(torch.randn(batch, generator=generator))


def sigma_and_timestep(u: torch.Tensor, shift: float = SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """Look u in [0, 1) up in the training table: (sigma [B, 1], timestep [B, 1]), float32."""
    sigmas, timesteps = training_table(shift)
    index = (u * NUM_TRAIN_TIMESTEPS).long().clamp_(max=NUM_TRAIN_TIMESTEPS - 1)
    return sigmas[index].unsqueeze(1), timesteps[index].unsqueeze(1)


def interpolate(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = sigma * eps + (1 - sigma) * x0, sigma [B, 1] broadcast over (C, T, H, W)."""
    s = sigma.reshape(sigma.shape[0], *([1] * (x0.dim() - 1)))
    return s * eps + (1 - s) * x0


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return eps - x0


def sample_num_conditional_frames(batch: int, generator: torch.Generator,
                                  probs: dict[int, float] = CONDITIONAL_FRAMES_PROBS) -> torch.Tensor:
    """Number of clean latent frames per sample: 0 (text2world), 1 (image2world) or 2 (video2world)."""
    values = torch.tensor(list(probs.keys()))
    weights = torch.tensor(list(probs.values()), dtype=torch.float64)
    return values[torch.multinomial(weights, batch, replacement=True, generator=generator)]


def condition_mask(num_frames: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """M [B, 1, T, H, W] float32: 1 on latent frames [0, n_b) of sample b, else 0."""
    batch, _, frames, height, width = shape
    on = torch.arange(frames)[None, :] < num_frames[:, None]  # [B, T]
    return on[:, None, :, None, None].float().expand(batch, 1, frames, height, width).contiguous()


def replace_condition_frames(x_t: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The network input: clean latents in the condition frames, noisy ones elsewhere."""
    return x0 * mask + x_t * (1 - mask)


def drop_text(text: torch.Tensor, p_drop: float, generator: torch.Generator) -> torch.Tensor:
    """Zero each sample's text embedding with probability p_drop (classifier-free guidance dropout).
    Zeroing happens before the DiT's projection, as the official does."""
    keep = torch.bernoulli(torch.full((text.shape[0],), 1 - p_drop), generator=generator).to(text.dtype)
    return text * keep.reshape(-1, *([1] * (text.dim() - 1))).to(text.device)


@dataclass(frozen=True)
class NoisedBatch:
    """Everything one training step feeds the network and compares against."""

    x_in: torch.Tensor          # network input [B, C, T, H, W] (condition frames clean)
    timesteps: torch.Tensor     # [B, 1], 0..1000 scale
    sigma: torch.Tensor         # [B, 1]
    target: torch.Tensor        # eps - x0
    mask: torch.Tensor          # [B, 1, T, H, W] condition-frame mask


def make_noised_batch(x0: torch.Tensor, eps: torch.Tensor, u: torch.Tensor, num_conditional_frames: torch.Tensor,
                      shift: float = SHIFT) -> NoisedBatch:
    """Given the step's draws (eps, u, frame counts), build the network input and the target."""
    sigma, timesteps = sigma_and_timestep(u, shift)
    sigma, timesteps = sigma.to(x0.device), timesteps.to(x0.device)
    x_t = interpolate(x0, eps, sigma)
    mask = condition_mask(num_conditional_frames, x0.shape).to(x0.device)
    return NoisedBatch(replace_condition_frames(x_t, x0, mask), timesteps, sigma, velocity_target(x0, eps), mask)


def loss(v_pred: torch.Tensor, batch: NoisedBatch) -> torch.Tensor:
    """Plain MSE over everything; in the condition frames the prediction is replaced by the target
    (those frames contribute 0 and get no gradient but still count in the mean), as the official."""
    v = v_pred.float() * (1 - batch.mask) + batch.target * batch.mask
    return (v - batch.target).square().mean()
