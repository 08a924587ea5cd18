"""The UniPC sampler: the official schedules exactly, the solver against an independent implementation of
reference/dit_and_training.md §3.5, batches, condition frames, and the full official trajectory (case C)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmos_engine.infer import unipc
from tests.conftest import load_reference_case

# ------------------------------------------------------------------------------------------------ schedules


def test_schedule_matches_the_official_sigmas_and_timesteps_exactly():
    case = load_reference_case("unipc_sampler.pt")
    assert case["config"]["set_timesteps"] == {"num_inference_steps": 35, "shift": 5.0, "use_kerras_sigma": False}
    schedule = unipc.flow_schedule(35, 5.0)
    assert schedule.sigmas.dtype == torch.float32 and schedule.sigmas.shape == (36,)
    assert torch.equal(schedule.sigmas, case["outputs"]["sigmas"])
    assert schedule.timesteps.dtype == torch.int64
    assert torch.equal(schedule.timesteps, case["outputs"]["timesteps"])


def test_schedule_constants_from_the_reference_text():
    schedule = unipc.flow_schedule()
    assert schedule.num_steps == 35
    assert schedule.timesteps[:5].tolist() == [999, 993, 987, 981, 974]
    assert schedule.timesteps[-3:].tolist() == [318, 232, 128]
    assert schedule.sigmas[0].item() == pytest.approx(0.9998, abs=1e-6)  # the network sees 0.999 meanwhile
    assert schedule.sigmas[-1].item() == 0.0


def test_post_trained_variant_uses_the_karras_ladder():
    variant = unipc.SAMPLER_VARIANTS["post-trained"]
    assert variant.conditional_frame_timestep == 0.1
    schedule = unipc.flow_schedule(35, 5.0, karras_sigmas=variant.karras_sigmas)
    assert schedule.num_steps == 36  # 36 rungs of the ladder, each a step, then sigma 0
    assert schedule.sigmas[0].item() == pytest.approx(200 / 201, rel=1e-6)
    assert schedule.sigmas[-2].item() == pytest.approx(0.01 / 1.01, rel=1e-6)
    assert schedule.sigmas[-1].item() == 0.0
    assert schedule.timesteps[:5].tolist() == [995, 994, 993, 992, 990]
    assert schedule.timesteps[-2:].tolist() == [17, 9]
    assert torch.equal(schedule.timesteps, (schedule.sigmas[:-1].double() * 1000).long())
    assert torch.all(schedule.sigmas[1:] < schedule.sigmas[:-1])


def test_initial_noise_is_numpy_randomstate():
    noise = unipc.initial_noise((2, 3, 4), seed=7)
    expected = np.random.RandomState(7).standard_normal((2, 3, 4)).astype(np.float32)
    assert noise.dtype == torch.float32 and np.array_equal(noise.numpy(), expected)


# ---------------------------------------------------------------------------------------- the solver itself


def reference_unipc(velocity, x, sigmas, timesteps):
    """§3.5 transcribed in the shape of the official scheduler (a list of model outputs, the last sample and
    the last order as state, the corrector's rho from `linalg.solve`), in float64, batch 1 at a time."""
    s = sigmas.double()
    alpha = 1 - s
    lam = torch.log(alpha) - torch.log(s)  # +inf at sigma 0
    steps = len(timesteps)
    outputs, last_sample, last_order = [], None, None
    x = x.double()
    for i in range(steps):
        v = velocity(x, torch.full((x.shape[0], 1), float(timesteps[i]), dtype=torch.float32))
        m = x - s[i] * v
        if i > 0:  # corrector UniC
            h = lam[i] - lam[i - 1]
            B = phi = torch.expm1(-h)
            m0 = outputs[-1]
            base = s[i] / s[i - 1] * last_sample - alpha[i] * phi * m0
            if last_order == 1:
                x = base - alpha[i] * B * 0.5 * (m - m0)
            else:
                r = (lam[i - 2] - lam[i - 1]) / h
                D = (outputs[-2] - m0) / r
                k1 = phi / (-h) - 1
                k2 = k1 / (-h) - 0.5
                rho = torch.linalg.solve(torch.stack([torch.stack([torch.ones_like(r), torch.ones_like(r)]),
                                                      torch.stack([r, torch.ones_like(r)])]),
                                         torch.stack([k1 / B, 2 * k2 / B]))
                x = base - alpha[i] * B * (rho[0] * D + rho[1] * (m - m0))
        outputs.append(m)
        order = min(2, steps - i, i + 1)
        last_sample, last_order = x, order
        h = lam[i + 1] - lam[i]  # predictor UniP
        B = phi = torch.expm1(-h)
        x = s[i + 1] / s[i] * x - alpha[i + 1] * phi * m
        if order == 2:
            r = (lam[i - 1] - lam[i]) / h
            x = x - alpha[i + 1] * B * 0.5 * (outputs[-2] - m) / r
    return x


def linear_field(channels: int, seed: int = 0):
    """v(x, t) = A x + b t/1000, A acting on channels: smooth, known, and it uses the timestep."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(channels, channels, generator=g, dtype=torch.float64) / channels**0.5 - torch.eye(channels)
    b = torch.randn(channels, 1, 1, 1, generator=g, dtype=torch.float64)

    def velocity(x, timesteps_B_1):
        t = timesteps_B_1.to(torch.float64)[:, :, None, None, None] / 1000
        return (torch.einsum("ij,bj...->bi...", A.to(x.dtype), x) + b * t).to(x.dtype)

    return velocity, A, b


@pytest.mark.parametrize("karras", [False, True])
def test_solver_equals_the_independent_implementation(karras):
    velocity, _, _ = linear_field(4)
    schedule = unipc.flow_schedule(35, 5.0, karras_sigmas=karras)
    noise = torch.from_numpy(np.random.RandomState(3).standard_normal((1, 4, 2, 3, 5)))
    expected = reference_unipc(velocity, noise, schedule.sigmas, schedule.timesteps)
    exact = unipc.unipc_sample(velocity, noise, schedule)  # float64 all the way: the same algebra
    assert exact.dtype == torch.float64
    torch.testing.assert_close(exact, expected, rtol=0, atol=1e-12)
    fp32 = unipc.unipc_sample(velocity, noise.float(), schedule)  # the official precision
    assert fp32.dtype == torch.float32
    torch.testing.assert_close(fp32.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_solver_converges_to_the_exact_flow():
    """For v = A x + c (timesteps ignored), x(0) = e^{-A s0} x(s0) + A^-1 (e^{-A s0} - I) c exactly; the error
    must shrink at second order (x ~4 per doubling of the steps; >3 allowed) on the unshifted schedule."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.5
    c = torch.randn(3, generator=g, dtype=torch.float64)
    noise = torch.randn(1, 3, generator=g, dtype=torch.float64)
    errors = []
    for steps in (40, 80, 160):
        schedule = unipc.flow_schedule(steps, shift=1.0)
        final = unipc.unipc_sample(lambda x, t: x @ A.T + c, noise, schedule)
        E = torch.linalg.matrix_exp(-A * float(schedule.sigmas[0]))
        exact = noise @ E.T + torch.linalg.solve(A, (E - torch.eye(3, dtype=torch.float64)) @ c)
        errors.append((final - exact).abs().max().item())
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3, errors
    assert errors[2] < 1e-4


def test_batch_equals_per_sample_runs():
    velocity, _, _ = linear_field(4, seed=2)
    schedule = unipc.flow_schedule()
    noise = unipc.initial_noise((3, 4, 2, 3, 5), seed=5)
    seen = []

    def recording(x, t):
        seen.append(t)
        return velocity(x, t)

    batched = unipc.unipc_sample(recording, noise, schedule)
    assert all(t.shape == (3, 1) and t.dtype == torch.float32 for t in seen)
    assert [int(t[0, 0]) for t in seen] == schedule.timesteps.tolist()
    for k in range(3):
        single = unipc.unipc_sample(velocity, noise[k:k + 1], schedule)
        torch.testing.assert_close(batched[k:k + 1], single, rtol=0, atol=1e-6)


def test_steps_yield_each_latent_and_velocity():
    velocity, _, _ = linear_field(2)
    schedule = unipc.flow_schedule(5)
    noise = unipc.initial_noise((1, 2, 1, 1, 1), seed=0)
    steps = list(unipc.unipc_steps(velocity, noise, schedule))
    assert [s.index for s in steps] == [0, 1, 2, 3, 4]
    assert torch.equal(steps[0].velocity, velocity(noise, torch.full((1, 1), 999.0)))
    assert torch.equal(steps[-1].latent, unipc.unipc_sample(velocity, noise, schedule))


# ------------------------------------------------------------------------------------------ condition frames


def test_condition_inputs_replace_frames_and_set_per_frame_timesteps():
    x_t = torch.randn(2, 3, 4, 2, 2)
    x0 = torch.randn(2, 3, 4, 2, 2)
    mask = torch.zeros(2, 1, 4, 2, 2)
    mask[:, :, :2] = 1
    mask[1, :, 1] = 0  # the second sample has a single condition frame
    t = torch.tensor([[993.0], [993.0]])
    x_in, same_t = unipc.condition_inputs(x_t, t, x0, mask)
    assert same_t is t
    assert torch.equal(x_in[0, :, :2], x0[0, :, :2]) and torch.equal(x_in[0, :, 2:], x_t[0, :, 2:])
    assert torch.equal(x_in[1, :, :1], x0[1, :, :1]) and torch.equal(x_in[1, :, 1:], x_t[1, :, 1:])
    _, per_frame = unipc.condition_inputs(x_t, t, x0, mask, conditional_frame_timestep=0.1)
    expected = torch.tensor([[0.1, 0.1, 993.0, 993.0], [0.1, 993.0, 993.0, 993.0]])
    torch.testing.assert_close(per_frame, expected)


def test_condition_frames_are_reproduced():
    """Whatever the network says, condition frames follow the straight noise -> x0 path (§3.4)."""
    velocity, _, _ = linear_field(3)
    noise = unipc.initial_noise((2, 3, 3, 2, 2), seed=4)
    x0 = torch.randn(2, 3, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 1, 3, 2, 2)
    mask[:, :, 0] = 1

    def conditioned(x, t):
        x_in, t_in = unipc.condition_inputs(x, t, x0, mask)
        return unipc.condition_velocity(velocity(x_in, t_in), x0, mask, noise)

    final = unipc.unipc_sample(conditioned, noise, unipc.flow_schedule())
    # Only the start mismatch is left: the path starts at sigma_0 = 0.9998, not 1.
    torch.testing.assert_close(final[:, :, :1], x0[:, :, :1], rtol=0, atol=1e-3)
    assert (final[:, :, 1:] - x0[:, :, 1:]).abs().max() > 0.1


# ------------------------------------------------------------------------------ the official trajectory (C)


@pytest.mark.slow
def test_case_c_trajectory_with_the_tiny_dit():
    """35 steps of guidance 7 with the negative prompt and one condition frame, the tiny DiT of the case."""
    cosmos_dit = pytest.importorskip("cosmos_engine.models.cosmos_dit")
    case = load_reference_case("unipc_sampler.pt")
    cfg, inputs, outputs = case["config"], case["inputs"], case["outputs"]
    assert cfg["conditional_frame_timestep"] < 0 and cfg["is_negative_prompt"] and cfg["denoise_replace_gt_frames"]
    net = cosmos_dit.CosmosDiT(cosmos_dit.DiTConfig(**cfg["dit"])).eval()
    net.load_state_dict(case["state_dict"], strict=True)

    noise = unipc.initial_noise(tuple(inputs["initial_noise"].shape), cfg["noise_seed"])
    assert torch.equal(noise, inputs["initial_noise"])
    x0, mask = inputs["condition_latent_x0"], inputs["condition_video_input_mask_B_C_T_H_W"]
    assert mask[0, 0, :, 0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]  # num_conditional_frames = 1
    text = torch.cat([inputs["t5_text_embeddings"], inputs["neg_t5_text_embeddings"]])  # cond, uncond
    guidance = cfg["guidance"]

    def guided(x, t):
        # Both branches in one network call of batch 2, each conditioned as the official `denoise` does,
        # then combined as the Video2World model does: v_c + g (v_c - v_u).
        x_in, t_in = unipc.condition_inputs(x, t, x0, mask)
        v = net(x_B_C_T_H_W=x_in.repeat(2, 1, 1, 1, 1), timesteps_B_T=t_in.repeat(2, 1), crossattn_emb=text,
                condition_video_input_mask_B_C_T_H_W=mask.repeat(2, 1, 1, 1, 1), fps=inputs["fps"].repeat(2),
                padding_mask=inputs["padding_mask"].repeat(2, 1, 1, 1))
        v_cond, v_uncond = unipc.condition_velocity(v, x0, mask, noise).chunk(2)
        return v_cond + guidance * (v_cond - v_uncond)

    saved = list(outputs["saved_steps"])
    # The case's tolerance for an fp32 implementation is 1e-3 on the final latent; measured here ~1e-5.
    atol = 1e-3
    with torch.no_grad():
        for step in unipc.unipc_steps(guided, noise, unipc.flow_schedule()):
            if step.index + 1 in saved:
                k = saved.index(step.index + 1)
                torch.testing.assert_close(step.velocity, outputs["guided_velocity_at_step"][k], rtol=0, atol=atol,
                                           msg=lambda m: f"guided velocity of step {step.index + 1}: {m}")
                torch.testing.assert_close(step.latent, outputs["latents_after_step"][k], rtol=0, atol=atol,
                                           msg=lambda m: f"latent after step {step.index + 1}: {m}")
    torch.testing.assert_close(step.latent, outputs["final_latent"], rtol=0, atol=atol)
    assert (step.latent[:, :, :1] - x0[:, :, :1]).abs().max() < 2e-3  # the condition frame is reproduced
