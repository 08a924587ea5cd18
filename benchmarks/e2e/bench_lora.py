"""Benchmark LoRA against full post-training: trainable parameters, peak memory and seconds per step.

tiny: `cosmos-engine run` on recipes/tiny_posttrain.toml (full) and recipes/tiny_lora.toml (LoRA, rank 16),
cached windows, through bench_train's `run_tiny`; the phases and the peak memory (the run's peak RSS on a
CPU) come from each run's metrics.jsonl, the first `--warmup` steps left out.

2b: the official 2B DiT at a small token count, each mode in a child process of its own (a CPU's peak RSS
cannot be reset, so each mode's peak is its own), with the trainer's parts: bench_train's cached dataset,
`build_model` with or without [lora] (the official rank 32, alpha 32 and targets), the step's draws and
`forward_loss`, `clip_grad_norm`, the fused AdamW, `update_ema`. LoRA's state (the frozen base, the
adapters with their gradients, moments and EMA) fits in a laptop's memory; full fine-tuning's fp32 state
(41 GB) may not: then, as in bench_train, its optimizer and EMA phases are timed on the first
`--subset-blocks` blocks and scaled, and its peak excludes the moments and the EMA (the row says so).
Precision: "bf16" on a GPU, "fp32" on a CPU (no bf16 matmul hardware path there).

    python benchmarks/e2e/bench_lora.py [--flavors tiny 2b] [--steps 12] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cosmos_engine.config.schema import LoraConfig, ModelConfig, TrainConfig  # noqa: E402
from cosmos_engine.data.cache import CachedWindowDataset  # noqa: E402
from cosmos_engine.data.dataset import WindowSampler, build_loader  # noqa: E402
from cosmos_engine.models import lora  # noqa: E402
from cosmos_engine.models.cosmos_dit import CosmosDiT  # noqa: E402
from cosmos_engine.models.flavors import dit_config  # noqa: E402
from cosmos_engine.parallel.distributed import Distributed  # noqa: E402
from cosmos_engine.train import ema as ema_lib  # noqa: E402
from cosmos_engine.train import optim  # noqa: E402
from cosmos_engine.train import step as step_lib  # noqa: E402
from cosmos_engine.train.data import TrainingData  # noqa: E402
from cosmos_engine.train.metrics import peak_memory_bytes  # noqa: E402
from cosmos_engine.train.trainer import PhaseClock, build_model, compute_context  # noqa: E402

from benchmarks.common import print_table, reexec_with_malloc_tuning, write_result  # noqa: E402
from benchmarks.e2e.bench_train import (  # noqa: E402
    PHASES,
    cached_dataset,
    free_bytes,
    run_tiny,
    state_bytes,
    time_optimizer_and_ema_on_subset,
)

RECIPES = {"full": "tiny_posttrain.toml", "lora": "tiny_lora.toml"}
COLUMNS = ["flavor", "mode", "trainable_params", "steps", "precision", *PHASES, "peak_memory_gb"]


def parameter_counts(flavor: str, lora_cfg: LoraConfig | None) -> tuple[int, int]:
    """(all DiT parameters, the trained ones) from the network on the meta device."""
    with torch.device("meta"):
        net = CosmosDiT(dit_config(flavor))
    total = sum(p.numel() for p in net.parameters())
    return total, lora.adapter_parameter_count(net, lora_cfg) if lora_cfg else total


# ----------------------------------------------------------------------------------------------- tiny
def bench_tiny(tmp: Path, steps: int, warmup: int) -> list[dict]:
    dataset = tmp / "tiny_data"
    subprocess.run([sys.executable, "-m", "cosmos_engine.cli", "prepare", "--synthetic", "4", "--out", str(dataset)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    for mode, recipe in RECIPES.items():
        records = run_tiny(dataset, tmp / "runs", "windows", steps, recipe)[warmup:]
        lora_cfg = LoraConfig(enabled=True, rank=16, alpha=16.0) if mode == "lora" else None  # tiny_lora.toml's
        total, trained = parameter_counts("tiny", lora_cfg)
        row = {"flavor": "tiny", "mode": mode, "params": total, "trainable_params": trained, "steps": len(records),
               "precision": "fp32", "optimizer_ema": "measured"}
        row.update({p: statistics.median(r[p] for r in records) for p in PHASES})
        row["peak_memory_gb"] = max(r["peak_memory_gb"] for r in records)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------- 2b
def child_2b(mode: str, args: argparse.Namespace) -> dict:
    """One mode's 2b row, measured in this (child) process."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    lora_cfg = LoraConfig(enabled=True) if mode == "lora" else None
    total, trained = parameter_counts(args.flavor_2b, lora_cfg)
    # Frozen base: parameters only; trained parameters: themselves, gradients, two moments (fp32 adapters).
    need = (total * dtype.itemsize + trained * 20) if lora_cfg else state_bytes(total, dtype.itemsize, ema=True)
    whole_step = need < 0.85 * free_bytes(device)
    with tempfile.TemporaryDirectory() as tmp:
        videos, vae, cache, windows, text_by_prompt, latent_thw = cached_dataset(Path(tmp), args, device, args.flavor_2b)
        model_cfg = ModelConfig(flavor=args.flavor_2b, dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
                                activation_checkpointing=args.activation_checkpointing)
        train_cfg = TrainConfig(precision=precision, ema=whole_step)
        model = build_model(model_cfg, train_cfg, Distributed(0, 1, device), seed=0, lora_cfg=lora_cfg)
        params = list(model.net.parameters())
        opt = optim.build_optimizer(params, lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps,
                                    weight_decay=train_cfg.weight_decay) if whole_step else None
        scheduler = optim.build_scheduler(opt, train_cfg.warmup_steps) if opt else None
        source = CachedWindowDataset(cache, videos, vae.identity, **windows)
        loader = build_loader(source, WindowSampler(source.all_starts(), seed=0), batch_size=1, num_workers=0,
                              device=device)
        data = TrainingData(loader, text_by_prompt, None, device, latent_thw)
        records = []
        for iteration in range(args.warmup_2b + args.steps_2b):
            clock = PhaseClock(device)
            x0, text = next(data)
            clock.lap("data")
            draws = step_lib.draw_for_samples(0, iteration, [iteration], x0.shape, train_cfg.text_dropout)
            with compute_context(precision, device):
                loss, _ = step_lib.forward_loss(model.net, x0, text, draws)
            loss_value = loss.item()
            clock.lap("forward")
            loss.backward()
            clock.lap("backward")
            if whole_step:
                optim.clip_grad_norm(params, train_cfg.grad_clip)
                opt.step()
                scheduler.step()
                opt.zero_grad(set_to_none=True)
                clock.lap("optimizer")
                ema_lib.update_ema(model.net_ema, model.net, ema_lib.ema_beta(iteration))
                clock.lap("ema")
            else:
                for p in params:
                    p.grad = None
            print(f"  {args.flavor_2b} {mode} step {iteration}: {clock.total:.1f} s (loss {loss_value:.4f})",
                  file=sys.stderr, flush=True)
            if iteration >= args.warmup_2b:
                records.append({"data_wait_s": clock.phases["data"], "forward_s": clock.phases["forward"],
                                "backward_s": clock.phases["backward"], "optimizer_s": clock.phases.get("optimizer"),
                                "ema_s": clock.phases.get("ema"), "step_time_s": clock.total})
    row = {"flavor": args.flavor_2b, "mode": mode, "params": total, "trainable_params": trained,
           "steps": len(records), "precision": precision, "state_gib": need / 2**30,
           "optimizer_ema": "measured" if whole_step else "scaled from a subset (see subset)",
           "tokens": latent_thw[0] * (latent_thw[1] // 2) * (latent_thw[2] // 2)}
    row.update({p: statistics.median(r[p] for r in records) if records[0][p] is not None else None for p in PHASES})
    row["peak_memory_gb"] = peak_memory_bytes(device) / 2**30
    if not whole_step:
        del model, opt, params, data, loader
        subset = time_optimizer_and_ema_on_subset(dit_config(args.flavor_2b), args.subset_blocks, device, dtype, reps=3,
                                                  grad_clip=0.1)
        scale = total / subset["parameters"]
        row.update(subset={**subset, "blocks": args.subset_blocks, "scale": scale},
                   optimizer_s=subset["optimizer_s"] * scale, ema_s=subset["ema_s"] * scale)
        row["step_time_s"] += row["optimizer_s"] + row["ema_s"]
        row["peak_memory_note"] = (f"excludes the AdamW moments and the EMA; whole steps need {need / 2**30:.1f} GiB "
                                   "of training state")
    return row


def bench_2b(args: argparse.Namespace) -> list[dict]:
    rows = []
    for mode in ("full", "lora"):
        cmd = [sys.executable, __file__, "--child-2b", mode, "--flavor-2b", args.flavor_2b,
               "--steps-2b", str(args.steps_2b), "--warmup-2b", str(args.warmup_2b), "--frames", str(args.frames),
               "--height", str(args.height), "--width", str(args.width), "--subset-blocks", str(args.subset_blocks),
               "--activation-checkpointing", args.activation_checkpointing]
        if args.precision:
            cmd += ["--precision", args.precision]
        result = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    reexec_with_malloc_tuning()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavors", nargs="+", choices=["tiny", "2b"], default=["tiny", "2b"])
    parser.add_argument("--steps", type=int, default=12, help="tiny: steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="tiny: first steps left out")
    parser.add_argument("--steps-2b", type=int, default=3, help="2b: timed steps per mode")
    parser.add_argument("--warmup-2b", type=int, default=1, help="2b: untimed steps first")
    parser.add_argument("--frames", type=int, default=5, help="2b: frames per window (1 + 4k)")
    parser.add_argument("--height", type=int, default=128, help="2b: window height (multiple of 16)")
    parser.add_argument("--width", type=int, default=128, help="2b: window width (multiple of 16)")
    parser.add_argument("--precision", choices=["bf16", "fp32-master", "fp32"], default=None,
                        help="2b: default bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--activation-checkpointing", choices=["none", "full", "selective"], default="none")
    parser.add_argument("--subset-blocks", type=int, default=4,
                        help="2b, when full fine-tuning's state does not fit: blocks that time its optimizer and EMA")
    parser.add_argument("--flavor-2b", choices=["2b", "tiny"], default="2b", help=argparse.SUPPRESS)  # a quick check
    parser.add_argument("--child-2b", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps_2b < 1 or args.steps <= args.warmup:
        parser.error("need at least one timed step: --steps-2b >= 1 and --steps > --warmup")
    if (args.frames - 1) % 4 or args.height % 16 or args.width % 16:
        parser.error("--frames must be 1 + 4k and --height/--width multiples of 16")
    if args.child_2b:
        print(json.dumps(child_2b(args.child_2b, args)))
        return
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "tiny" in args.flavors:
            rows += bench_tiny(Path(tmp), args.steps, args.warmup)
    if "2b" in args.flavors:
        rows += bench_2b(args)
    ratios = {}
    for flavor in dict.fromkeys(r["flavor"] for r in rows):
        full, adapted = (next(r for r in rows if r["flavor"] == flavor and r["mode"] == m) for m in ("full", "lora"))
        ratios[flavor] = {"trainable_params": adapted["trainable_params"] / full["trainable_params"],
                          "step_time_s": adapted["step_time_s"] / full["step_time_s"],
                          "peak_memory_gb": adapted["peak_memory_gb"] / full["peak_memory_gb"]}
    # The machine may be shared: the load says how much the step times can be trusted.
    path = write_result("lora", device, {"rows": rows, "lora_over_full": ratios, "load_average_1_5_15": os.getloadavg()})
    print_table(rows, COLUMNS)
    for row in rows:
        if "peak_memory_note" in row:
            print(f"{row['flavor']} {row['mode']} peak memory: {row['peak_memory_note']}")
    for flavor, ratio in ratios.items():
        print(f"{flavor}: LoRA / full: trainable parameters {ratio['trainable_params']:.4f}, step time "
              f"{ratio['step_time_s']:.2f}, peak memory {ratio['peak_memory_gb']:.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
