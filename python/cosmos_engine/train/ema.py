"""The official "power" EMA of the DiT weights, kept in fp32.

After the optimizer step that completes iteration n (n = steps completed before it, 0-based):
beta(n) = 0 if n < 1 else (1 - 1/(n + 1)) ** (gamma + 1), with gamma the largest real root of
x^3 + 7x^2 + (16 - s^-2) x + (12 - s^-2), s = 0.1 (gamma = 6.9372...). ema = beta ema + (1 - beta) net,
over the trained parameters only (buffers are left as they are).

A LoRA run averages its adapters only (`adapter_ema`): the frozen base is the same in both nets, so a copy
of it would hold nothing the net does not (the official LoRA run builds a whole second net, base included;
we keep one base in memory). The checkpoint's `net_ema.*` then holds just the adapters, and
`cosmos-engine convert` puts the EMA net together from `net.*`'s base and those.
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


def adapter_ema(net: torch.nn.Module) -> torch.nn.Module:
    """An fp32 copy of `net`'s trainable parameters (a LoRA net's adapters) in a module tree of their own, with
    the parameters' names: `blocks.0.self_attn.q_proj.lora_A.default.weight` and so on. On the meta device it
    stays empty (loaded after `to_empty`); frozen, like any EMA."""
    root = torch.nn.Module()
    names = []
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        copy = torch.empty_like(param, dtype=torch.float32)
        if not param.is_meta:
            copy.copy_(param.detach())
        module.register_parameter(leaf, torch.nn.Parameter(copy, requires_grad=False))
        names.append(name)
    if [name for name, _ in root.named_parameters()] != names:  # update_ema pairs the two by order
        raise RuntimeError("adapter_ema: the copy's parameter order differs from the network's")
    return root


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """ema_param = beta * ema_param + (1 - beta) * net_param over `net`'s trained parameters (all of them, or a
    LoRA net's adapters), in the EMA's dtype (fp32)."""
    ema_params = [p for p in ema.parameters()]
    net_params = [p.to(ema_params[0].dtype) for p in net.parameters() if p.requires_grad]
    if len(ema_params) != len(net_params):
        raise ValueError(f"EMA has {len(ema_params)} parameters but the network has {len(net_params)}")
    torch._foreach_mul_(ema_params, beta)
    torch._foreach_add_(ema_params, net_params, alpha=1.0 - beta)
