"""Training metrics: analytic DiT FLOPs, throughput, memory, and the metric sinks.

One `MetricsProcessor` per run writes a line per logged step to `metrics.jsonl` in the run folder (rank 0),
to TensorBoard when it is installed, and returns the record for the progress bar.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cosmos_engine.atomic import atomic_write

log = logging.getLogger(__name__)

# Dense bf16 peak of GPUs we know, for MFU (FLOP/s). Unknown devices (and CPUs) report no MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "B200": 2250e12, "L40S": 362e12}


def dit_forward_flops_by_kind(cfg: Any, latent_thw: tuple[int, int, int], text_tokens: int) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) of one DiT forward for one sample, from the config (`DiTConfig`
    field names) and the latent size (T, H, W), split into "gemm" (every Linear: projections, MLP, AdaLN
    modulations, timestep MLP, patch embedding, final layer, text projection) and "attention" (QK^T and PV
    of both attentions). Elementwise work is left out. Timesteps are one per sample ([B, 1]); per-frame
    timesteps multiply the small AdaLN terms by the latent frame count."""
    t, h, w = latent_thw
    tokens = (t // cfg.patch_temporal) * (h // cfg.patch_spatial) * (w // cfg.patch_spatial)
    d, dc, hidden = cfg.model_channels, cfg.crossattn_emb_channels, int(cfg.model_channels * cfg.mlp_ratio)
    patch_in = cfg.patch_in_channels * cfg.patch_spatial ** 2 * cfg.patch_temporal  # + condition and padding masks
    patch_out = cfg.out_channels * cfg.patch_spatial ** 2 * cfg.patch_temporal
    rank = cfg.adaln_lora_dim
    gemm_per_block = (
        4 * tokens * d * d              # self-attention q, k, v, output projections
        + 2 * tokens * d * d            # cross-attention q and output projections
        + 2 * text_tokens * dc * d      # cross-attention k, v from the projected text
        + 2 * tokens * d * hidden       # MLP
        + 3 * (d * rank + rank * 3 * d)  # AdaLN-LoRA modulations (one row per sample)
    )
    attention_per_block = 2 * tokens * tokens * d + 2 * tokens * text_tokens * d  # QK^T and PV, self and cross
    text_in = cfg.crossattn_proj_in_channels if cfg.use_crossattn_projection else 0
    gemm = (
        cfg.num_blocks * gemm_per_block
        + tokens * patch_in * d + tokens * d * patch_out            # patch embedding, final linear
        + d * rank + rank * 2 * d                                   # final layer's modulation
        + d * d + d * 3 * d                                         # timestep MLP
        + text_tokens * text_in * dc                                # text projection
    )
    return {"gemm": 2.0 * gemm, "attention": 2.0 * cfg.num_blocks * attention_per_block}


def dit_forward_flops(cfg: Any, latent_thw: tuple[int, int, int], text_tokens: int) -> float:
    """FLOPs of one DiT forward for one sample (`dit_forward_flops_by_kind`, both kinds): what MFU counts."""
    return sum(dit_forward_flops_by_kind(cfg, latent_thw, text_tokens).values())


def _register_attention_flops() -> None:
    """Let `torch.utils.flop_counter.FlopCounterMode` count our attention ops as it counts SDPA's: the
    forward is QK^T and PV (4 B h Lq Lk d), the backward recomputes the scores and computes dV, dP, dQ and
    dK (10 B h Lq Lk d). Tests compare `dit_forward_flops` with FlopCounterMode through these."""
    from torch.utils.flop_counter import register_flop_formula

    from cosmos_engine.ops import _library

    if not _library.is_loaded():
        return

    def scores(q_shape, k_shape) -> int:
        batch, q_len, heads, dim = q_shape
        return batch * heads * q_len * k_shape[1] * dim

    @register_flop_formula(torch.ops.cosmos_engine.attention_fwd)
    def _fwd_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
        return 4 * scores(q_shape, k_shape)

    @register_flop_formula(torch.ops.cosmos_engine.attention_bwd)
    def _bwd_flops(grad_out_shape, q_shape, k_shape, *args, **kwargs) -> int:
        return 10 * scores(q_shape, k_shape)


_register_attention_flops()


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass
class StepTimes:
    """Seconds spent in one step: waiting for data, in total, and by phase (data, forward, backward,
    optimizer, ema)."""

    data_wait: float = 0.0
    total: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


class MetricsProcessor:
    """Turns per-step measurements into a metrics record and writes it to the run's sinks (rank 0)."""

    def __init__(self, run_dir: Path, device: torch.device, flops_per_sample: float, tokens_per_sample: int,
                 world_size: int = 1, is_main: bool = True):
        self.device = device
        self.flops_per_sample = flops_per_sample
        self.tokens_per_sample = tokens_per_sample
        self.world_size = world_size
        self.is_main = is_main
        self.peak = peak_flops(device)
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed; metrics go to %s only", self.path)

    def forget_after(self, step: int) -> None:
        """Drop the metrics.jsonl lines of steps after `step` (work lost in a crash, about to be redone) and a
        line torn by a kill mid-write, so the file holds each step once."""
        if not self.is_main or not self.path.is_file():
            return

        def keep(line: str) -> bool:
            try:
                return json.loads(line)["step"] <= step
            except (ValueError, KeyError, TypeError):
                return False

        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if keep(line)]
        if len(kept) != len(lines):
            atomic_write(self.path, "".join(line + "\n" for line in kept))

    def record(self, step: int, loss: float, grad_norm: float, lr: float, batch_size: int, times: StepTimes) -> dict:
        """One step's metrics. Throughput is global (all ranks); FLOPs are model FLOPs (3x forward for
        forward + backward, activation recomputation not counted), the usual MFU convention."""
        samples = batch_size * self.world_size
        flops = 3.0 * self.flops_per_sample * samples
        step_time = max(times.total, 1e-12)
        rec = {
            "step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr, "step_time_s": times.total,
            "data_wait_s": times.data_wait, "samples_per_s": samples / step_time,
            "tokens_per_s": samples * self.tokens_per_sample / step_time, "tflops_per_s": flops / step_time / 1e12,
            "mfu": (flops / step_time / self.world_size / self.peak) if self.peak else None,
            "peak_memory_gb": peak_memory_bytes(self.device) / 2**30, "time": time.time(),
            **{f"{name}_s": seconds for name, seconds in times.phases.items() if name != "data"},
        }
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if self._tb is not None:
                for key, value in rec.items():
                    if isinstance(value, (int, float)) and key not in ("step", "time"):
                        self._tb.add_scalar(key, value, step)
        return rec

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
