"""`attention`: non-causal softmax attention over [B, L, H, D] tensors, the one entry the DiT uses.

Backends, best first: FlashAttention-4 (`flash-attn-4`, CuTe DSL) on Hopper or newer GPUs for fp16/bf16
inputs when it is installed; otherwise PyTorch's `scaled_dot_product_attention` (cuDNN/flash on GPU, its
own CPU kernels on the CPU); `force_backend("reference")` gives the explicit-softmax reference.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch
import torch.nn.functional as F

from cosmos_engine.ops import _backend, reference

log = logging.getLogger(__name__)


@functools.cache
def _flash_attn_4():
    """flash_attn.cute.flash_attn_func, or None when flash-attn-4 is not installed."""
    if importlib.util.find_spec("flash_attn") is None or importlib.util.find_spec("flash_attn.cute") is None:
        return None
    from flash_attn.cute import flash_attn_func

    return flash_attn_func


def backend_name(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> str:
    """The attention implementation `attention` uses for inputs on `device` with `dtype`."""
    if _backend.forced_backend() == "reference":
        return "reference"
    if (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _flash_attn_4() is not None
            and torch.cuda.get_device_capability(device)[0] >= 9):
        return "flash_attn_4"
    return "sdpa"


@functools.cache
def _log_choice(name: str, device: str) -> None:
    log.info("attention backend on %s: %s", device, name)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v without mask. q [B, Lq, H, d], k and v [B, Lk, H, d] -> [B, Lq, H, d]."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention: q, k, v must be [B, L, H, d], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    name = backend_name(q.device, q.dtype)
    _log_choice(name, q.device.type)
    if name == "reference":
        return reference.attention(q, k, v)
    if name == "flash_attn_4":
        out = _flash_attn_4()(q, k, v, causal=False)
        return out[0] if isinstance(out, tuple) else out
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
