"""`attention`: non-causal softmax attention over [B, L, H, D] tensors, the one entry the DiT uses.

The compiled op `cosmos_engine::attention_fwd(q, k, v) -> (out, lse)` has its own backward op
`attention_bwd(grad_out, q, k, v, out, lse) -> (dq, dk, dv)`. Being one op on every device is what lets
selective activation checkpointing save (out, lse) instead of recomputing attention in backward.

* CPU: our flash-style C++ kernel (csrc/attention) for head dims that are multiples of 8 up to 256; other
  head dims use the explicit-softmax reference (logged once).
* CUDA, per call and never raising: flash-attn-4 (forward and backward) through the same two ops (a Python
  implementation registered below for the CUDA key) when it is installed and accepts the device, dtype and
  head dim; else `scaled_dot_product_attention` directly, with cuDNN, then flash, then memory-efficient,
  then math priority. SDPA is called directly, not inside our op, because its public form neither returns
  lse nor takes it back: inside the op its backward would have to be rebuilt from torch ops (the
  `chunked_backward` that a direct call of the op on CUDA without flash-attn-4 falls back to), far slower
  than SDPA's own. Selective checkpointing recognises SDPA's aten ops as well, so nothing is recomputed
  either way. No GPU was available while this was written: the CUDA path has never run on one (its
  torch-op pieces are tested on the CPU).
* `force_backend("reference")`: the explicit-softmax reference (ops/reference.py).
* `sdpa_on_cpu()`: torch SDPA instead of our CPU kernel inside the block (benchmarks compare the two).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from cosmos_engine.ops import _backend, _library, reference

log = logging.getLogger(__name__)

# Priority order of SDPA's CUDA backends; math last, so the CUDA path never runs out of candidates.
_SDPA_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                  SDPBackend.MATH]
_FA4_HEAD_DIMS = (64, 96, 128)  # what flash-attn-4's forward and backward both instantiate
_LSE_CHUNK_ELEMENTS = 2**26     # scores per chunk when the SDPA path computes lse
_sdpa_on_cpu = False            # a plain module global (torch.compile reads it while tracing)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Validate ranks, shapes, dtypes and devices. Errors name the argument."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: '{name}' must be [B, L, heads, head_dim], got shape {tuple(t.shape)}")
    if q.dtype not in reference.FLOAT_DTYPES:
        raise TypeError(f"attention: 'q' must be float32, bfloat16, float16 or float64, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"attention: '{name}' is {t.dtype} but 'q' is {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"attention: '{name}' is on {t.device} but 'q' is on {q.device}")
    batch, _, heads, dim = q.shape
    if k.shape[0] != batch or k.shape[2] != heads or k.shape[3] != dim:
        raise ValueError(f"attention: 'k' has shape {tuple(k.shape)}, expected [B={batch}, Lk, heads={heads}, "
                         f"head_dim={dim}] to match 'q' of shape {tuple(q.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"attention: 'v' has shape {tuple(v.shape)} but 'k' has {tuple(k.shape)}")
    if k.shape[1] == 0:
        raise ValueError(f"attention: 'k' must have at least one token, got shape {tuple(k.shape)}")


def cpu_kernel_supports(head_dim: int) -> bool:
    return 0 < head_dim <= 256 and head_dim % 8 == 0


# ------------------------------------------------------------------------------------------------- CUDA
@functools.cache
def _flash_attn_4():
    """flash_attn.cute.interface (flash-attn-4), or None when it is not installed."""
    if importlib.util.find_spec("flash_attn") is None or importlib.util.find_spec("flash_attn.cute") is None:
        return None
    from flash_attn.cute import interface

    return interface


def _fa4_accepts(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    return (_flash_attn_4() is not None and dtype in (torch.float16, torch.bfloat16) and head_dim in _FA4_HEAD_DIMS
            and torch.cuda.get_device_capability(device)[0] in (9, 10, 11))


def cuda_choice(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """What the CUDA implementation runs for these inputs (pure: forward and backward agree)."""
    return "flash_attn_4" if _fa4_accepts(device, dtype, head_dim) else "sdpa"


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel(_SDPA_BACKENDS, set_priority=True):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _row_chunk(q: torch.Tensor, k: torch.Tensor) -> int:
    """Query rows per chunk so that a chunk's [B, H, rows, Lk] scores hold _LSE_CHUNK_ELEMENTS."""
    return max(1, _LSE_CHUNK_ELEMENTS // max(1, q.shape[0] * q.shape[2] * k.shape[1]))


def chunked_lse(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """lse [B, H, Lq] in the accumulation dtype, over query chunks (no [Lq, Lk] matrix at once)."""
    acc, chunk = reference.acc_dtype(q), _row_chunk(q, k)
    kt = k.transpose(1, 2).to(acc)
    parts = [torch.logsumexp(q[:, i:i + chunk].transpose(1, 2).to(acc) @ kt.transpose(-1, -2) * q.shape[-1] ** -0.5, -1)
             for i in range(0, q.shape[1], chunk)]
    return torch.cat(parts, dim=-1)


def chunked_backward(grad_out, q, k, v, out, lse) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of attention from (out, lse), in torch ops over query chunks, in the accumulation
    dtype: P = exp(s - lse), dS = P (dO v^T - rowsum(dO * out)), dq = dS k, dk = dS^T q, dv = P^T dO
    (the scale folded into dq and dk). The same math as the CPU kernel's backward."""
    acc, chunk, scale = reference.acc_dtype(q), _row_chunk(q, k), q.shape[-1] ** -0.5
    kt, vt = k.transpose(1, 2).to(acc), v.transpose(1, 2).to(acc)  # [B, H, Lk, D]
    dk, dv, dqs = torch.zeros_like(kt), torch.zeros_like(vt), []
    for i in range(0, q.shape[1], chunk):
        qc, doc = q[:, i:i + chunk].transpose(1, 2).to(acc), grad_out[:, i:i + chunk].transpose(1, 2).to(acc)
        dsum = (doc * out[:, i:i + chunk].transpose(1, 2).to(acc)).sum(-1, keepdim=True)
        p = torch.exp(qc @ kt.transpose(-1, -2) * scale - lse[:, :, i:i + chunk, None].to(acc))
        ds = p * (doc @ vt.transpose(-1, -2) - dsum)
        dqs.append(ds @ kt * scale)
        dk += ds.transpose(-1, -2) @ qc * scale
        dv += p.transpose(-1, -2) @ doc
    to_blhd = lambda t: t.transpose(1, 2).to(q.dtype).contiguous()  # noqa: E731
    return to_blhd(torch.cat(dqs, dim=2)), to_blhd(dk), to_blhd(dv)


def _cuda_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if cuda_choice(q.device, q.dtype, q.shape[-1]) == "flash_attn_4":
        out, lse = _flash_attn_4()._flash_attn_fwd(q, k, v, softmax_scale=q.shape[-1] ** -0.5, causal=False,
                                                   return_lse=True)
        return out, lse
    with torch.no_grad():
        return _sdpa(q, k, v).contiguous(), chunked_lse(q, k)


def _cuda_bwd(grad_out, q, k, v, out, lse) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if cuda_choice(q.device, q.dtype, q.shape[-1]) == "flash_attn_4":
        dq, dk, dv = _flash_attn_4()._flash_attn_bwd(q, k, v, out, grad_out, lse, softmax_scale=q.shape[-1] ** -0.5,
                                                     causal=False)
        return dq, dk, dv
    return chunked_backward(grad_out, q, k, v, out, lse)


# ------------------------------------------------------------------------------------ fakes, autograd
_cuda_library: torch.library.Library | None = None


def _register() -> None:
    """CUDA implementations, fakes and autograd for the compiled ops (only when _C is loaded)."""
    global _cuda_library
    _cuda_library = torch.library.Library("cosmos_engine", "IMPL")  # registrations live as long as this object
    _cuda_library.impl("attention_fwd", _cuda_fwd, "CUDA")
    _cuda_library.impl("attention_bwd", _cuda_bwd, "CUDA")

    @torch.library.register_fake("cosmos_engine::attention_fwd")
    def _fwd_fake(q, k, v):
        torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, lambda: "attention: q, k, v must be 4-D")
        batch, q_len, heads, dim = q.shape
        out = q.new_empty((batch, q_len, heads, dim))
        return out, q.new_empty((batch, heads, q_len), dtype=reference.acc_dtype(q))

    @torch.library.register_fake("cosmos_engine::attention_bwd")
    def _bwd_fake(grad_out, q, k, v, out, lse):
        torch._check(grad_out.shape == q.shape, lambda: "attention: grad_out and q shapes differ")
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def _setup_context(ctx, inputs, output):
        q, k, v = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)

    def _backward(ctx, grad_out, _grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        return torch.ops.cosmos_engine.attention_bwd(grad_out, q, k, v, out, lse)

    torch.library.register_autograd("cosmos_engine::attention_fwd", _backward, setup_context=_setup_context)


if _library.is_loaded():
    _register()


# ----------------------------------------------------------------------------------------------- entry
def backend_name(device: torch.device, dtype: torch.dtype = torch.bfloat16, head_dim: int = 128) -> str:
    """The attention implementation `attention` uses for inputs on `device` with `dtype` and `head_dim`."""
    if _backend.forced_backend() == "reference":
        return "reference"
    if not _library.is_loaded():
        return "sdpa (no compiled library)"
    if device.type == "cuda":
        if cuda_choice(device, dtype, head_dim) == "flash_attn_4":
            return "cosmos_engine::attention_fwd -> flash_attn_4"
        return "sdpa (cudnn > flash > efficient > math)"
    if device.type == "cpu" and _sdpa_on_cpu:
        return "sdpa (sdpa_on_cpu)"
    if device.type == "cpu" and not cpu_kernel_supports(head_dim):
        return f"reference (head_dim {head_dim} is not a multiple of 8 up to 256)"
    return f"cosmos_engine::attention_fwd -> CPU kernel ({_library.build_info().get('attention_cpu_isa', '?')})"


@contextlib.contextmanager
def sdpa_on_cpu() -> Iterator[None]:
    """Run torch SDPA instead of our CPU kernel for CPU inputs inside the block."""
    global _sdpa_on_cpu
    previous, _sdpa_on_cpu = _sdpa_on_cpu, True
    try:
        yield
    finally:
        _sdpa_on_cpu = previous


@functools.cache
def _log_choice(device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    log.info("attention on %s, %s, head_dim %d: %s", device, dtype, head_dim, backend_name(device, dtype, head_dim))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v without mask. q [B, Lq, H, d], k and v [B, Lk, H, d] -> [B, Lq, H, d].
    Differentiable in q, k and v."""
    check_inputs(q, k, v)
    forced = _backend.forced_backend()
    if forced not in (None, "reference") and forced != q.device.type:
        raise RuntimeError(f"backend {forced!r} is forced but the inputs are on {q.device}")
    if not torch.compiler.is_compiling():
        _log_choice(q.device, q.dtype, q.shape[-1])
    if forced == "reference" or (q.device.type == "cpu" and not cpu_kernel_supports(q.shape[-1])):
        return reference.attention(q, k, v)
    if (not _library.is_loaded() or (q.device.type == "cpu" and _sdpa_on_cpu)
            or (q.device.type == "cuda" and cuda_choice(q.device, q.dtype, q.shape[-1]) == "sdpa")):
        return _sdpa(q, k, v)
    out, _lse = torch.ops.cosmos_engine.attention_fwd(q, k, v)
    return out
