"""The official "power" EMA of the DiT weights, kept in fp32.

After the optimizer step that completes iteration n (n = steps completed before it, 0-based):
beta(n) = 0 if n < 1 else (1 - 1/(n + 1)) ** (gamma + 1), with gamma the largest real root of
x^3 + 7x^2 + (16 - s^-2) x + (12 - s^-2), s = 0.1 (gamma = 6.9372...). ema = beta ema + (1 - beta) net,
over parameters only (buffers are left as they are).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

EMA_RATE = 0.1


@functools.cache
def power_ema_gamma(rate: float = EMA_RATE) -> float:
    c = rate ** -2
    roots = np.roots([1.0, 7.0, 16.0 - c, 12.0 - c])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def ema_beta(iteration: int, rate: float = EMA_RATE) -> float:
    if iteration < 1:
        return 0.0
    return (1.0 - 1.0 / (iteration + 1)) ** (power_ema_gamma(rate) + 1)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """ema_param = beta * ema_param + (1 - beta) * net_param, in the EMA's dtype (fp32)."""
    ema_params = [p for p in ema.parameters()]
    net_params = [p.to(ema_params[0].dtype) for p in net.parameters()]
    if len(ema_params) != len(net_params):
        raise ValueError(f"EMA has {len(ema_params)} parameters but the network has {len(net_params)}")
    torch._foreach_mul_(ema_params, beta)
    torch._foreach_add_(ema_params, net_params, alpha=1.0 - beta)
