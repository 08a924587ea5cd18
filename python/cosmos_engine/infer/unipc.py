"""The official sampler: flow-matching UniPC (order 2, bh2, data prediction), for batches.

reference/dit_and_training.md §3 describes what the official `FlowUniPCMultistepScheduler` and
`generate_samples_from_batch` do; this module does the same math, written out:

* `flow_schedule` gives the sigmas the solver uses (float32, exact) and the integer timesteps the network
  sees (`trunc(1000 sigma)`, so the network gets 999 where the solver uses 0.9998). Two variants, picked
  by `SAMPLER_VARIANTS`: "pre-trained" (the NeMo post-training experiment and the pre-trained model: 35
  shifted-linear steps, shift 5) and "post-trained" (the default of the official 2B/post-trained model:
  Karras/EDM sigmas, 36 steps for the default 35, and condition frames seen by the network at timestep 0.1).
* `initial_noise` is the official `numpy.random.RandomState(seed).standard_normal` noise, as float32,
  the same on every device.
* `condition_inputs` / `condition_velocity` are the official condition-frame handling (§3.4). They are
  part of the velocity model, not of the solver: the official applies them inside each network call
  (conditional and unconditional branch alike), BEFORE the two branches are combined by guidance. The
  guided-velocity function the pipeline builds therefore calls them around each DiT call; the solver
  only ever sees a velocity field.
* `unipc_steps` / `unipc_sample` integrate that velocity field from the initial noise to sigma 0.

Batches: the official step only works for batch 1 (it stacks a 6-D velocity onto a 5-D latent and relies
on broadcasting). Here every tensor carries its batch dimension and the solver's coefficients are scalars
shared by the batch (one schedule for all samples), so a batch of B samples gives the results of B
single-sample runs (bit for bit where the velocity model's own batching is). The solver state is float32
(float64 when the noise is, for exact tests); the coefficients are computed in float64 from the float32
sigmas (the official computes them in float32; the difference is ~1e-7 relative).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from cosmos_engine.ops.reference import acc_dtype

# velocity(x_t [B, C, T, H, W] float32, timesteps [B, 1] float32 on the network's 0..1000 scale) -> v, like x_t.
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

NUM_TRAIN_TIMESTEPS = 1000
# EDM sigma range and Karras exponent of the post-trained model's schedule (reference §3.7).
KARRAS_SIGMA_MAX, KARRAS_SIGMA_MIN, KARRAS_RHO = 200.0, 0.01, 7.0


@dataclass(frozen=True)
class SamplerVariant:
    """How an official experiment samples. `karras_sigmas`: the EDM/Karras sigma ladder instead of the
    shifted linear one; `conditional_frame_timestep`: the timestep (0..1000 scale) the network sees on the
    condition frames, or None for the current step's timestep on every frame."""

    karras_sigmas: bool
    conditional_frame_timestep: float | None


SAMPLER_VARIANTS = {
    # The 2B/pre-trained model and the NeMo post-training experiment, hence every checkpoint trained with it.
    "pre-trained": SamplerVariant(karras_sigmas=False, conditional_frame_timestep=None),
    # The official default inference model 2B/post-trained (experiment `..._rf_with_edm_ckpt`).
    "post-trained": SamplerVariant(karras_sigmas=True, conditional_frame_timestep=0.1),
}


@dataclass(frozen=True)
class Schedule:
    """sigmas [N + 1] float32, decreasing, last 0: the solver's noise levels. timesteps [N] int64:
    trunc(1000 sigma_i), what the network is given at step i."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()


def flow_schedule(num_steps: int = 35, shift: float = 5.0, *, karras_sigmas: bool = False) -> Schedule:
    """The official `FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1).set_timesteps(...)`.

    Shifted linear (default): base_i = linspace(sigma_max, 0, N + 1)[:N] with sigma_max = 0.999 as the
    scheduler's float32 table holds it, sigma_i = shift * base_i / (1 + (shift - 1) * base_i); N steps.
    Karras (`karras_sigmas=True`, `shift` unused): EDM sigmas s_j = (max^(1/7) + j/N (min^(1/7) - max^(1/7)))^7
    for j = 0..N, as flow sigmas s / (1 + s); N + 1 steps, as in the official code. Then sigma = 0 is
    appended, and the timesteps are computed in float64 and truncated.
    """
    if num_steps < 1:
        raise ValueError(f"flow_schedule: num_steps must be at least 1, got {num_steps}")
    if karras_sigmas:
        ramp = np.linspace(0.0, 1.0, num_steps + 1)
        hi, lo = KARRAS_SIGMA_MAX ** (1 / KARRAS_RHO), KARRAS_SIGMA_MIN ** (1 / KARRAS_RHO)
        edm = (hi + ramp * (lo - hi)) ** KARRAS_RHO
        sigmas = edm / (1 + edm)
    else:
        if shift <= 0:
            raise ValueError(f"flow_schedule: shift must be positive, got {shift}")
        sigma_max = float(np.float32(1 - 1 / NUM_TRAIN_TIMESTEPS))
        base = np.linspace(sigma_max, 0.0, num_steps + 1)[:-1]
        sigmas = shift * base / (1 + (shift - 1) * base)
    timesteps = torch.from_numpy((sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64))
    return Schedule(sigmas=torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32)), timesteps=timesteps)


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The official initial latent noise: `numpy.random.RandomState(seed).standard_normal(shape)` as
    float32. Drawn on the CPU by numpy, so it is the same on every device and GPU model."""
    noise = np.random.RandomState(seed).standard_normal(shape).astype(np.float32)
    return torch.from_numpy(noise).to(device)


# ---------------------------------------------------------------------------------------------------------------------
# Condition frames (part of the velocity model; see the module docstring)
# ---------------------------------------------------------------------------------------------------------------------


def condition_inputs(x_t: torch.Tensor, timesteps_B_1: torch.Tensor, condition_x0: torch.Tensor,
                     condition_mask_B_1_T_H_W: torch.Tensor,
                     conditional_frame_timestep: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's input for one call: condition frames replaced by their clean latent, and timesteps.

    x_in = x0 * M + x_t * (1 - M) in x_t's dtype, the solver's float32 (M broadcast over channels), as the
    official computes it before the network casts it to its own dtype. The timesteps stay [B, 1] unless
    `conditional_frame_timestep` is set; then they become per-frame [B, T] with that value on the condition
    frames, blended by the frame's mask fraction exactly as the official does.
    """
    mask = condition_mask_B_1_T_H_W.to(x_t.dtype)
    x_in = condition_x0.to(x_t.dtype) * mask + x_t * (1 - mask)
    if conditional_frame_timestep is None:
        return x_in, timesteps_B_1
    mask_B_T = mask.mean(dim=(1, 3, 4))
    timesteps_B_T = conditional_frame_timestep * mask_B_T + timesteps_B_1.to(mask.dtype) * (1 - mask_B_T)
    return x_in, timesteps_B_T


def condition_velocity(v_net: torch.Tensor, condition_x0: torch.Tensor, condition_mask_B_1_T_H_W: torch.Tensor,
                       noise: torch.Tensor) -> torch.Tensor:
    """The velocity of one network call with the condition frames' velocity replaced by noise - x0, in the
    noise's dtype (float32; the official casts the network output to float32 first).

    `noise` is the sampler's INITIAL noise (not the current latent): on the straight path from it to x0 the
    solver's data prediction in those frames is then exactly x0, so the result reproduces the condition frames.
    """
    mask = condition_mask_B_1_T_H_W.to(noise.dtype)
    return (noise - condition_x0.to(noise.dtype)) * mask + v_net.to(noise.dtype) * (1 - mask)


# ---------------------------------------------------------------------------------------------------------------------
# The solver
# ---------------------------------------------------------------------------------------------------------------------


class UniPCStep(NamedTuple):
    """What one solver step produced: `index` (0-based), the `latent` after the step and the `velocity`
    it was given."""

    index: int
    latent: torch.Tensor
    velocity: torch.Tensor


def unipc_steps(velocity: VelocityFn, noise: torch.Tensor, schedule: Schedule) -> Iterator[UniPCStep]:
    """Run the official UniPC multistep solver from `noise` [B, ...]; yield after every step.

    Per step i (reference §3.5): evaluate v_i = velocity(x_i, t_i), data prediction m_i = x_i - sigma_i v_i;
    for i >= 1 correct x_i with m_i (UniC, of the order the previous predictor used; m_i itself stays the
    one evaluated at the uncorrected x_i); then predict x_{i+1} (UniP, order min(2, N - i, i + 1), so order 1
    at the first step and, `lower_order_final`, at the last one, which lands on x_N = m_{N-1}).
    """
    sigmas = [float(s) for s in schedule.sigmas]
    alphas = [1.0 - s for s in sigmas]
    lambdas = [math.log(a) - math.log(s) if s > 0 else math.inf for a, s in zip(alphas, sigmas)]
    num_steps = schedule.num_steps
    batch = noise.shape[0]

    x = noise.to(acc_dtype(noise))  # float32 as the official; float64 stays exact
    m_prev: list[torch.Tensor] = []  # data predictions of the two previous steps, oldest first
    x_prev = x                       # the previous predictor's input
    order_prev = 0
    for i in range(num_steps):
        t = torch.full((batch, 1), float(schedule.timesteps[i]), dtype=torch.float32, device=x.device)
        v = velocity(x, t).to(x.dtype)
        m = x - sigmas[i] * v
        if i > 0:
            x = _corrector(x_prev, m, m_prev, sigmas, alphas, lambdas, i, order_prev)
        order = min(2, num_steps - i, i + 1)
        x_next = _predictor(x, m, m_prev, sigmas, alphas, lambdas, i, order)
        x_prev, order_prev, m_prev = x, order, (m_prev + [m])[-2:]
        x = x_next
        yield UniPCStep(i, x, v)


def unipc_sample(velocity: VelocityFn, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The final latent of `unipc_steps` (the data prediction of the last step)."""
    for step in unipc_steps(velocity, noise, schedule):
        pass
    return step.latent


def _predictor(x: torch.Tensor, m: torch.Tensor, m_prev: list[torch.Tensor], sigmas: list[float],
               alphas: list[float], lambdas: list[float], i: int, order: int) -> torch.Tensor:
    """UniP-bh2 from sigma_i to sigma_{i+1}, data prediction, order 1 or 2 (with rho = 1/2 at order 2)."""
    h = lambdas[i + 1] - lambdas[i]
    phi = math.expm1(-h)  # = B(h) for bh2; -1 at the last step, where h = inf
    x_next = (sigmas[i + 1] / sigmas[i]) * x - (alphas[i + 1] * phi) * m
    if order == 2:
        r = (lambdas[i - 1] - lambdas[i]) / h
        x_next = x_next - (alphas[i + 1] * phi * 0.5 / r) * (m_prev[-1] - m)
    return x_next


def _corrector(x_prev: torch.Tensor, m: torch.Tensor, m_prev: list[torch.Tensor], sigmas: list[float],
               alphas: list[float], lambdas: list[float], i: int, order: int) -> torch.Tensor:
    """UniC-bh2: redo the step sigma_{i-1} -> sigma_i from `x_prev` with the new data prediction `m`."""
    m0 = m_prev[-1]
    h = lambdas[i] - lambdas[i - 1]
    phi = math.expm1(-h)  # = B(h) for bh2
    base = (sigmas[i] / sigmas[i - 1]) * x_prev - (alphas[i] * phi) * m0
    if order == 1:
        return base - (alphas[i] * phi * 0.5) * (m - m0)
    # Order 2: rho solves [[1, 1], [r, 1]] rho = b, with b from the phi-function expansion of bh2.
    r = (lambdas[i - 2] - lambdas[i - 1]) / h
    k1 = phi / -h - 1
    k2 = k1 / -h - 0.5
    b1, b2 = k1 / phi, 2 * k2 / phi
    rho0 = (b1 - b2) / (1 - r)
    rho1 = b1 - rho0
    return base - (alphas[i] * phi * rho0 / r) * (m_prev[-2] - m0) - (alphas[i] * phi * rho1) * (m - m0)
