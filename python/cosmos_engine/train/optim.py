"""Optimizer, learning-rate schedule and gradient clipping of the official NeMo post-training recipe.

AdamW (fused where the device supports it), one parameter group (>= 2-D parameters first, then 1-D, as
the official lists them), weight decay on all parameters. The schedule multiplies the base lr by
f(n) = f_start + (f_max - f_start) n / warmup during warm-up, then decays linearly to f_min at the end of
the cycle (official LambdaLinearScheduler: f_start 1e-6, f_max 0.5, f_min 0.2, cycle 100000 steps).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor

F_START, F_MAX, F_MIN, CYCLE = 1e-6, 0.5, 0.2, 100_000


def lr_factor(step: int, warmup_steps: int, f_start: float = F_START, f_max: float = F_MAX, f_min: float = F_MIN,
              cycle_length: int = CYCLE) -> float:
    """The factor applied to the base lr at scheduler step `step` (0-based)."""
    if step < warmup_steps:
        return f_start + (f_max - f_start) * step / warmup_steps
    return f_min + (f_max - f_min) * (cycle_length - step) / (cycle_length - warmup_steps)


def param_group_order(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """>= 2-D parameters first, then 1-D ones (the official group order; it fixes the fused kernel's
    traversal and so the exact floating-point result)."""
    params = [p for p in params if p.requires_grad]
    return [p for p in params if p.dim() >= 2] + [p for p in params if p.dim() < 2]


def build_optimizer(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float) -> torch.optim.AdamW:
    ordered = param_group_order(params)
    fused = bool(ordered) and all(p.device.type in ("cuda", "cpu") for p in ordered)
    return torch.optim.AdamW(ordered, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps))


def set_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, *, lr: float,
                        betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """Put the recipe's values into a resumed optimizer and schedule (their checkpoint holds the values they
    were saved with). The current lr is recomputed exactly as LambdaLR computes it, so unchanged values
    resume bitwise."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group, lmbda in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group.update(initial_lr=lr, lr=lr * lmbda(scheduler.last_epoch), betas=betas, eps=eps,
                     weight_decay=weight_decay)


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> tuple[torch.Tensor, float]:
    """Official GradClip(force_finite=True): non-finite gradient entries become 0, then the global L2
    norm is computed and every gradient scaled by min(1, max_norm / (norm + 1e-6)).
    Returns (norm before clipping, the coefficient applied)."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads:
        return torch.zeros(()), 1.0
    for g in grads:
        torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(norm, DTensor):  # FSDP: each rank holds a shard; the norm is global
        norm = norm.full_tensor()
    coefficient = min(1.0, max_norm / (norm.item() + 1e-6)) if max_norm > 0 else 1.0
    if coefficient < 1.0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm, coefficient
