"""Benchmark post-training steps: seconds per step and its split, with the latent cache on vs off.

tiny: runs `cosmos-engine run` on the tiny recipe (a synthetic dataset it draws itself) twice, `data.cache =
"windows"` and `"off"` (the official behaviour: the VAE encodes every step's window), and reads each step's
phases from the run's metrics.jsonl: data wait (with the cache off this includes the VAE encode), DiT
forward, backward, optimizer (clip + AdamW + schedule), EMA. The first `--warmup` steps are left out.

2b: the official 2B DiT (2,059,174,912 parameters, seeded random init) at a small token count, in this
process with the trainer's parts: `build_model`, `TrainingData` over a synthetic dataset cached by
`LatentCache.build` with the real Wan2.1 VAE architecture (seeded random weights), the step's draws and
`forward_loss`, `clip_grad_norm`, the fused AdamW, `update_ema`, timed per phase by the trainer's
`PhaseClock`. Cache off encodes each step's window with that VAE. Captions come from a stand-in with the
Reason1 embedding shape ([512, 100352]): this engine encodes each caption once per run, never in a step.
Precision: the official "bf16" on a GPU; "fp32" on a CPU, where bf16 matmuls have no hardware path and
are orders of magnitude slower. The whole step runs when the training state (parameters, gradients, two
Adam moments, the fp32 EMA) fits in the device's free memory; when it does not (a 24 GB CPU machine needs
41 GB for fp32), the steps run data, forward and backward, and the optimizer and EMA phases are timed on
the parameters of the first `--subset-blocks` blocks and scaled by the parameter count (both phases are
element-wise over the parameters); the result says which.

    python benchmarks/e2e/bench_train.py [--flavors tiny 2b] [--steps 12] [--warmup 2]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import print_table, reexec_with_malloc_tuning, write_result  # noqa: E402
from cosmos_engine.config.schema import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from cosmos_engine.data.cache import CachedWindowDataset, LatentCache  # noqa: E402
from cosmos_engine.data.dataset import VideoWindowDataset, WindowSampler, build_loader, load_records, make_decoder  # noqa: E402
from cosmos_engine.data.prepare import prepare_synthetic  # noqa: E402
from cosmos_engine.data.text_embeddings import cached_embeddings  # noqa: E402
from cosmos_engine.models.cosmos_dit import CosmosDiT  # noqa: E402
from cosmos_engine.models.flavors import dit_config, vae_config  # noqa: E402
from cosmos_engine.models.wan_vae import WanVAE  # noqa: E402
from cosmos_engine.parallel.distributed import Distributed  # noqa: E402
from cosmos_engine.train import ema as ema_lib, optim, step as step_lib  # noqa: E402
from cosmos_engine.train.data import LatentEncoder, TrainingData  # noqa: E402
from cosmos_engine.train.metrics import peak_memory_bytes  # noqa: E402
from cosmos_engine.train.trainer import PhaseClock, build_model, compute_context  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PHASES = ["data_wait_s", "forward_s", "backward_s", "optimizer_s", "ema_s", "step_time_s"]


# ----------------------------------------------------------------------------------------------- tiny
def run_tiny(dataset: Path, root: Path, cache: str, steps: int, recipe: str = "tiny_posttrain.toml") -> list[dict]:
    name = f"bench_{Path(recipe).stem}_{cache}"
    cmd = [sys.executable, "-m", "cosmos_engine.cli", "run", str(REPO / "recipes" / recipe),
           "--set", f"data.dataset_dir={dataset}", "--set", f"data.cache={cache}", "--set", f"job.name={name}",
           "--set", f"train.max_steps={steps}", "--set", f"checkpoint.save_every={steps}"]
    subprocess.run(cmd, check=True, env={**os.environ, "IMAGINAIRE_OUTPUT_ROOT": str(root)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = root / "cosmos_predict_v2p5" / "tiny" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def bench_tiny(tmp: Path, steps: int, warmup: int) -> list[dict]:
    dataset = tmp / "tiny_data"
    subprocess.run([sys.executable, "-m", "cosmos_engine.cli", "prepare", "--synthetic", "4", "--out", str(dataset)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    for cache in ("windows", "off"):
        records = run_tiny(dataset, tmp / "runs", cache, steps)[warmup:]
        row = {"flavor": "tiny", "cache": cache, "steps": len(records), "precision": "fp32", "optimizer_ema": "measured"}
        row.update({p: statistics.median(r[p] for r in records) for p in PHASES})
        row["samples_per_s"] = statistics.median(r["samples_per_s"] for r in records)
        row["peak_memory_gb"] = max(r["peak_memory_gb"] for r in records)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------- 2b
class CaptionStandIn:
    """Embeddings of the Reason1 shape for the cache (an encoder and its source in one); their values do not
    matter to the step's cost."""

    def __init__(self, tokens: int, channels: int) -> None:
        self.tokens, self.channels = tokens, channels

    def prepare(self) -> None:
        pass

    def identity(self, memo_file: Path | None = None) -> str:
        return "bench-caption-stand-in/reason1-shape"

    def load(self, device: torch.device) -> CaptionStandIn:
        return self

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.randn(len(prompts), self.tokens, self.channels, generator=torch.Generator().manual_seed(0))


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def state_bytes(parameters: int, parameter_bytes: int, ema: bool) -> int:
    """Parameters, gradients and the two AdamW moments in the parameter dtype, plus the fp32 EMA."""
    return parameters * (4 * parameter_bytes + (4 if ema else 0))


def time_optimizer_and_ema_on_subset(cfg, blocks: int, device: torch.device, dtype: torch.dtype, reps: int,
                                     grad_clip: float) -> dict:
    """The optimizer phase (clip + fused AdamW) and the EMA update on the first `blocks` DiT blocks'
    parameters, with random gradients, median of `reps` after one warm-up."""
    with torch.device("meta"):
        part = torch.nn.ModuleList(CosmosDiT(cfg).blocks[:blocks])
    part.to_empty(device=device).to(dtype)
    params = list(part.parameters())
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.02)
            p.grad = torch.randn_like(p)
    opt = optim.build_optimizer(params, lr=2**-14.5, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3)
    scheduler = optim.build_scheduler(opt, warmup_steps=2000)
    ema = copy.deepcopy(part).float().requires_grad_(False)
    optimizer_s, ema_s = [], []
    for i in range(reps + 1):
        clock = PhaseClock(device)
        optim.clip_grad_norm(params, grad_clip)
        opt.step()
        scheduler.step()
        clock.lap("optimizer")
        ema_lib.update_ema(ema, part, ema_lib.ema_beta(i + 1))
        clock.lap("ema")
        if i:
            optimizer_s.append(clock.phases["optimizer"])
            ema_s.append(clock.phases["ema"])
    return {"parameters": sum(p.numel() for p in params), "optimizer_s": statistics.median(optimizer_s),
            "ema_s": statistics.median(ema_s)}


def cached_dataset(tmp: Path, args: argparse.Namespace, device: torch.device, flavor: str):
    """Two synthetic clips of `args.frames` x `args.height` x `args.width`, their windows cached with the
    flavor's VAE architecture (seeded random weights) and a caption stand-in of the flavor's text width.
    Returns (videos, vae, cache, window settings, text embeddings by prompt, latent (T, H, W))."""
    dataset_dir = tmp / f"data_{flavor}"
    prepare_synthetic(dataset_dir, count=2, frames=args.frames + 4, height=args.height, width=args.width)
    videos = VideoWindowDataset(load_records(dataset_dir), args.frames, args.height, args.width, make_decoder("auto"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        vae = LatentEncoder(WanVAE(vae_config(flavor)).to(device=device, dtype=vae_dtype).eval().requires_grad_(False),
                            tiled=False)
    captions = CaptionStandIn(512, dit_config(flavor).crossattn_proj_in_channels)
    cache = LatentCache(dataset_dir)
    windows = {"window_stride": DataConfig().window_stride, "max_cached_windows": DataConfig().max_cached_windows}
    cache.build(videos, vae, device=device, **windows)
    text_by_prompt, _ = cached_embeddings([r.prompt for r in videos.records], cache.root / "text", captions, device)
    latent_thw = (1 + (args.frames - 1) // 4, args.height // 8, args.width // 8)
    return videos, vae, cache, windows, text_by_prompt, latent_thw


def bench_2b(tmp: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cfg = dit_config("2b")
    with torch.device("meta"):
        parameters = sum(p.numel() for p in CosmosDiT(cfg).parameters())
    need = state_bytes(parameters, dtype.itemsize, ema=True)
    whole_step = need < 0.85 * free_bytes(device)  # leave room for activations and the frozen VAE
    print(f"2b: {parameters:,} parameters, {precision}; the training state takes {need / 2**30:.1f} GiB of "
          f"{free_bytes(device) / 2**30:.1f} GiB free: "
          + ("whole steps" if whole_step else "optimizer and EMA timed on a subset"), flush=True)

    videos, vae, cache, windows, text_by_prompt, latent_thw = cached_dataset(tmp, args, device, "2b")

    model_cfg = ModelConfig(flavor="2b", dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
                            activation_checkpointing=args.activation_checkpointing)
    train_cfg = TrainConfig(precision=precision, ema=whole_step)
    t0 = time.perf_counter()
    model = build_model(model_cfg, train_cfg, Distributed(0, 1, device), seed=0)
    print(f"2b: built and initialised in {time.perf_counter() - t0:.0f} s", flush=True)
    params = list(model.net.parameters())
    opt = optim.build_optimizer(params, lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps,
                                weight_decay=train_cfg.weight_decay) if whole_step else None
    scheduler = optim.build_scheduler(opt, train_cfg.warmup_steps) if opt else None

    rows = []
    for mode in ("windows", "off"):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        source = CachedWindowDataset(cache, videos, vae.identity, **windows) if mode == "windows" else videos
        loader = build_loader(source, WindowSampler(source.all_starts(), seed=0), batch_size=1, num_workers=0,
                              device=device)
        data = TrainingData(loader, text_by_prompt, vae if mode == "off" else None, device, latent_thw)
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
            print(f"  2b cache={mode} step {iteration}: {clock.total:.1f} s (loss {loss_value:.4f})", flush=True)
            if iteration >= args.warmup_2b:
                records.append({"data_wait_s": clock.phases["data"], "forward_s": clock.phases["forward"],
                                "backward_s": clock.phases["backward"], "optimizer_s": clock.phases.get("optimizer"),
                                "ema_s": clock.phases.get("ema"), "step_time_s": clock.total})
        row = {"flavor": "2b", "cache": mode, "steps": len(records), "precision": precision,
               "optimizer_ema": "measured" if whole_step else "scaled from a subset (see subset)"}
        row.update({p: statistics.median(r[p] for r in records) if records[0][p] is not None else None for p in PHASES})
        # GPU: this mode's peak. CPU: the process's peak RSS so far (it cannot be reset), so the "off" row
        # also covers the cache build and the "windows" steps.
        row["peak_memory_gb"] = peak_memory_bytes(device) / 2**30
        rows.append(row)
    del model, opt, params, data, loader
    gc.collect()

    subset = None
    if not whole_step:
        subset = time_optimizer_and_ema_on_subset(cfg, args.subset_blocks, device, dtype, reps=3,
                                                  grad_clip=train_cfg.grad_clip)
        scale = parameters / subset["parameters"]
        subset.update(blocks=args.subset_blocks, scale=scale)
        for row in rows:
            row["optimizer_s"] = subset["optimizer_s"] * scale
            row["ema_s"] = subset["ema_s"] * scale
            row["step_time_s"] += row["optimizer_s"] + row["ema_s"]
    for row in rows:
        row["samples_per_s"] = 1.0 / row["step_time_s"]
        if not whole_step:  # the optimizer moments and the EMA never existed in these steps
            row["peak_memory_note"] = (f"excludes the AdamW moments and the EMA; whole steps need {need / 2**30:.1f} "
                                       "GiB of training state (parameters, gradients, moments, EMA)")
    detail = {"parameters": parameters, "precision": precision, "device": device.type,
              "window": {"frames": args.frames, "height": args.height, "width": args.width},
              "latent_thw": list(latent_thw), "tokens": latent_thw[0] * (latent_thw[1] // 2) * (latent_thw[2] // 2),
              "text_tokens": 512, "activation_checkpointing": args.activation_checkpointing,
              "state_gib": need / 2**30, "whole_step": whole_step, "optimizer_ema_subset": subset}
    return rows, detail


def main() -> None:
    reexec_with_malloc_tuning()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavors", nargs="+", choices=["tiny", "2b"], default=["tiny", "2b"])
    parser.add_argument("--steps", type=int, default=12, help="tiny: steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="tiny: first steps left out")
    parser.add_argument("--steps-2b", type=int, default=3, help="2b: timed steps per cache mode")
    parser.add_argument("--warmup-2b", type=int, default=1, help="2b: untimed steps first")
    parser.add_argument("--frames", type=int, default=5, help="2b: frames per window (1 + 4k)")
    parser.add_argument("--height", type=int, default=128, help="2b: window height (multiple of 16)")
    parser.add_argument("--width", type=int, default=128, help="2b: window width (multiple of 16)")
    parser.add_argument("--precision", choices=["bf16", "fp32-master", "fp32"], default=None,
                        help="2b: default bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--activation-checkpointing", choices=["none", "full", "selective"], default="none")
    parser.add_argument("--subset-blocks", type=int, default=4,
                        help="2b, when the state does not fit: blocks whose parameters time the optimizer and EMA")
    args = parser.parse_args()
    if args.steps_2b < 1 or args.steps <= args.warmup:
        parser.error("need at least one timed step: --steps-2b >= 1 and --steps > --warmup")
    if (args.frames - 1) % 4 or args.height % 16 or args.width % 16:
        parser.error("--frames must be 1 + 4k and --height/--width multiples of 16")
    # Both flavors train on the GPU when there is one (the tiny recipe's `run` picks it too).
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    rows, detail = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        if "tiny" in args.flavors:
            rows += bench_tiny(Path(tmp), args.steps, args.warmup)
        if "2b" in args.flavors:
            rows_2b, detail = bench_2b(Path(tmp), args)
            rows += rows_2b
    speedups = {}
    for flavor in dict.fromkeys(r["flavor"] for r in rows):
        on, off = (next(r for r in rows if r["flavor"] == flavor and r["cache"] == c) for c in ("windows", "off"))
        speedups[flavor] = on["samples_per_s"] / off["samples_per_s"]
    path = write_result("train", device, {"rows": rows, "cache_speedup_samples_per_s": speedups, "2b": detail})
    print_table(rows, ["flavor", "cache", "steps", "precision", *PHASES, "samples_per_s", "peak_memory_gb"])
    if any("peak_memory_note" in r for r in rows):
        print("2b peak memory: " + next(r["peak_memory_note"] for r in rows if "peak_memory_note" in r))
    for flavor, speedup in speedups.items():
        print(f"{flavor}: cache on vs off: {speedup:.2f}x samples/s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
