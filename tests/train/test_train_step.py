"""One official training step (case D): loss, gradients, clipping, AdamW, EMA — fp32 within 1e-5."""

from __future__ import annotations

import copy

import pytest
import torch

from cosmos_engine.models.cosmos_dit import CosmosDiT, DiTConfig
from cosmos_engine.train import ema, optim
from cosmos_engine.train.step import StepDraws, forward_loss
from tests.conftest import load_reference_case


@pytest.fixture(scope="module")
def case():
    return load_reference_case("train_step.pt")


@pytest.fixture(scope="module")
def stepped(case):
    """The network after the official step's forward and backward, with its loss and v_pred."""
    net = CosmosDiT(DiTConfig(**case["config"]["dit"]))
    net.load_state_dict(case["state_dict"])
    inputs = case["inputs"]
    draws = StepDraws(eps=inputs["epsilon_B_C_T_H_W"], u=inputs["u_B"],
                      num_conditional_frames=torch.tensor([case["config"]["num_conditional_frames"]]),
                      keep_text=torch.ones(1))
    loss, v_pred = forward_loss(net, inputs["x0_B_C_T_H_W"], inputs["t5_text_embeddings"], draws,
                                padding_mask=inputs["padding_mask"])
    loss.backward()
    return net, loss.detach(), v_pred.detach()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all()
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def test_loss_and_prediction(case, stepped):
    _, loss, v_pred = stepped
    assert rel_err(v_pred, case["outputs"]["v_pred_B_C_T_H_W"]) < 1e-5
    assert loss.item() == pytest.approx(case["outputs"]["loss"].item(), rel=1e-5)


def test_gradients(case, stepped):
    net, _, _ = stepped
    grads = {k: p.grad for k, p in net.named_parameters()}
    for key, want in case["outputs"]["grad_subset"].items():
        assert rel_err(grads[key], want) < 1e-4, key
    for key, (total, norm, absmax) in case["outputs"]["grad_checksums"].items():
        g = grads[key].double()
        assert g.norm().item() == pytest.approx(norm.item(), rel=1e-4, abs=1e-12), key
        assert g.abs().max().item() == pytest.approx(absmax.item(), rel=1e-4, abs=1e-12), key
    assert set(case["outputs"]["grad_checksums"]) == set(grads)


def clipped_copy(case, stepped):
    stepped_net, _, _ = stepped
    net = copy.deepcopy(stepped_net)
    for p, q in zip(net.parameters(), stepped_net.parameters()):
        p.grad = q.grad.clone()
    norm, coefficient = optim.clip_grad_norm(net.parameters(), case["config"]["grad_clip"]["clip_norm"])
    return net, norm, coefficient


def test_clip(case, stepped):
    _, norm, coefficient = clipped_copy(case, stepped)
    assert norm.item() == pytest.approx(case["outputs"]["total_grad_norm_before_clip"].item(), rel=1e-5)
    assert coefficient == pytest.approx(case["outputs"]["clip_coefficient"], rel=1e-5)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before:UserWarning")
@pytest.mark.parametrize("probe", ["adamw_step0", "adamw_probe_sched_step1000"])
def test_adamw_step_and_ema(case, stepped, probe):
    net, _, _ = clipped_copy(case, stepped)
    initial = {k: v.clone() for k, v in case["state_dict"].items()}
    cfg_opt, cfg_sched = case["config"]["optimizer"], case["config"]["scheduler"]
    opt = optim.build_optimizer(net.parameters(), lr=cfg_opt["lr"], betas=tuple(cfg_opt["betas"]),
                                eps=cfg_opt["eps"], weight_decay=cfg_opt["weight_decay"])
    sched = optim.build_scheduler(opt, cfg_sched["warm_up_steps"][0])
    if probe == "adamw_probe_sched_step1000":
        for _ in range(1000):
            sched.step()
    want = case["outputs"][probe]
    assert opt.param_groups[0]["lr"] == pytest.approx(want["lr"], rel=1e-12)
    opt.step()
    params = dict(net.named_parameters())
    for key, value in want["params_subset"].items():
        assert rel_err(params[key].detach(), value) < 1e-5, key
    for key, (total, norm, absmax) in want["params_checksums"].items():
        assert params[key].detach().double().norm().item() == pytest.approx(norm.item(), rel=1e-6), key
    if probe == "adamw_step0":
        changed = sum(int((params[k].detach() != initial[k]).sum()) for k in params)
        # Most step-0 updates fall below fp32 resolution; the count depends on last-bit rounding.
        assert abs(changed - want["n_params_changed"]) <= 0.01 * want["n_params_changed"]
        return
    # The EMA cases are taken after the probe update (the one that visibly moves the weights):
    # iteration 0 (beta 0) copies the net; iteration 10 blends it into the initial weights.
    for iteration, ema_case in ((0, case["outputs"]["ema_iter0"]), (10, case["outputs"]["ema_iter10_after_probe"])):
        ema_net = copy.deepcopy(net)
        ema_net.load_state_dict(initial)
        beta = ema.ema_beta(iteration)
        assert beta == pytest.approx(ema_case["beta"], rel=1e-12)
        ema.update_ema(ema_net, net, beta)
        ema_params = dict(ema_net.named_parameters())
        for key, value in ema_case["params_subset"].items():
            assert rel_err(ema_params[key].detach(), value) < 1e-5, key
