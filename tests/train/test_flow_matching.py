"""The training objective's pure functions, against the official training step (case D)."""

from __future__ import annotations

import pytest
import torch

from cosmos_engine.train import ema, flow_matching as fm, optim
from tests.conftest import load_reference_case


@pytest.fixture(scope="module")
def case():
    return load_reference_case("train_step.pt")


def test_training_table_endpoints():
    sigmas, timesteps = fm.training_table()
    assert sigmas.dtype == torch.float32 and sigmas.shape == (1000,)
    assert sigmas[0] == 1.0 and torch.all(sigmas[:-1] > sigmas[1:])
    assert sigmas[-1].item() == pytest.approx(5 * 0.001 / (1 + 4 * 0.001), rel=1e-6)
    torch.testing.assert_close(timesteps, sigmas * 1000)


def test_time_sampling_matches_official_step(case):
    gen = torch.Generator().manual_seed(case["inputs"]["torch_manual_seed_before_step"])
    eps = torch.randn(case["inputs"]["x0_B_C_T_H_W"].shape, generator=gen)
    u = fm.sample_u(1, gen)
    # The official step draws eps first, then z, on the CPU generator seeded right before the step.
    torch.testing.assert_close(eps, case["inputs"]["epsilon_B_C_T_H_W"], rtol=0, atol=0)
    torch.testing.assert_close(u, case["inputs"]["u_B"], rtol=0, atol=0)
    sigma, timestep = fm.sigma_and_timestep(u)
    torch.testing.assert_close(sigma, case["outputs"]["sigmas_B_1"], rtol=0, atol=0)
    torch.testing.assert_close(timestep, case["outputs"]["timesteps_B_1"], rtol=0, atol=0)


def test_noised_batch_matches_official_step(case):
    inputs, outputs = case["inputs"], case["outputs"]
    n = torch.tensor([case["config"]["num_conditional_frames"]])
    batch = fm.make_noised_batch(inputs["x0_B_C_T_H_W"], inputs["epsilon_B_C_T_H_W"], inputs["u_B"], n)
    x_t = fm.interpolate(inputs["x0_B_C_T_H_W"], inputs["epsilon_B_C_T_H_W"], batch.sigma)
    torch.testing.assert_close(x_t, outputs["xt_B_C_T_H_W"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batch.target, outputs["target_velocity"], rtol=0, atol=0)
    torch.testing.assert_close(batch.mask, outputs["condition_video_input_mask_B_C_T_H_W"], rtol=0, atol=0)
    # Condition frames of the network input are the clean latents.
    m = batch.mask.bool().expand_as(batch.x_in)
    assert torch.equal(batch.x_in[m], inputs["x0_B_C_T_H_W"][m])
    assert torch.equal(batch.x_in[~m], x_t[~m])


def test_loss_counts_condition_frames_as_zero():
    x0, eps = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    batch = fm.make_noised_batch(x0, eps, torch.tensor([0.3, 0.9]), torch.tensor([1, 2]))
    v_pred = torch.randn_like(x0)
    expected = ((v_pred - batch.target).square() * (1 - batch.mask)).mean()
    torch.testing.assert_close(fm.loss(v_pred, batch), expected)
    # Perfect prediction outside the condition frames gives 0 whatever is predicted inside them.
    assert fm.loss(batch.target * (1 - batch.mask) + 100 * batch.mask, batch).item() == 0.0


def test_random_draws_are_reproducible_and_distributed():
    counts = fm.sample_num_conditional_frames(40_000, torch.Generator().manual_seed(0)).bincount(minlength=3)
    torch.testing.assert_close(counts.float() / 40_000, torch.tensor([0.5, 0.25, 0.25]), atol=0.01, rtol=0)
    a = fm.sample_u(5, torch.Generator().manual_seed(7))
    assert torch.equal(a, fm.sample_u(5, torch.Generator().manual_seed(7)))
    text = torch.ones(1000, 3, 2)
    dropped = fm.drop_text(text, 0.2, torch.Generator().manual_seed(0))
    rate = (dropped.sum(dim=(1, 2)) == 0).float().mean().item()
    assert 0.15 < rate < 0.25 and set(dropped.unique().tolist()) == {0.0, 1.0}


def test_lr_schedule_matches_official(case):
    base = case["config"]["optimizer"]["lr"]
    warmup = case["config"]["scheduler"]["warm_up_steps"][0]
    assert base * optim.lr_factor(0, warmup) == pytest.approx(case["outputs"]["adamw_step0"]["lr"], rel=1e-12)
    assert base * optim.lr_factor(1000, warmup) == pytest.approx(case["outputs"]["adamw_probe_sched_step1000"]["lr"], rel=1e-12)
    # After warm-up the factor decays linearly from f_max to f_min over the cycle.
    assert optim.lr_factor(warmup, warmup) == pytest.approx(0.5)
    assert optim.lr_factor(100_000, warmup) == pytest.approx(0.2)


def test_ema_beta_matches_official(case):
    assert ema.power_ema_gamma() == pytest.approx(case["config"]["ema"]["exp_coefficient"], rel=1e-9)
    assert ema.ema_beta(0) == case["outputs"]["ema_iter0"]["beta"] == 0.0
    assert ema.ema_beta(10) == pytest.approx(case["outputs"]["ema_iter10_after_probe"]["beta"], rel=1e-12)


def test_clip_matches_official_rule():
    p1, p2 = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))
    p1.grad = torch.tensor([3.0, float("nan"), 0.0])
    p2.grad = torch.tensor([[4.0, float("inf")], [0.0, 0.0]])
    norm, coefficient = optim.clip_grad_norm([p1, p2], 0.1)
    assert norm.item() == pytest.approx(5.0)
    assert coefficient == pytest.approx(0.1 / (5.0 + 1e-6))
    torch.testing.assert_close(p1.grad, torch.tensor([3.0, 0.0, 0.0]) * coefficient)
    assert torch.isfinite(p2.grad).all()


def test_optimizer_group_order_is_official():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(4))]
    opt = optim.build_optimizer(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3)
    assert [p.dim() for p in opt.param_groups[0]["params"]] == [2, 1, 1]
