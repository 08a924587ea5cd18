"""`cosmos-engine run`: rectified-flow post-training of the Video2World DiT, resumable after any crash.

Build order (torchtitan's): the DiT on the meta device -> activation checkpointing -> FSDP2 per block and
then the root on a (replicate, shard) mesh (several ranks) -> materialize -> load the initial weights
(or the official random init) -> fp32 EMA copy -> AdamW + schedule -> resume from the run's newest
complete checkpoint. With [lora] enabled, PEFT adapters are injected into the DiT before activation
checkpointing (after the weights are loaded, on one rank); only they train, and the EMA and the optimizer
hold only them (see `build_model`). The frozen VAE and text encoder sit outside the sharded DiT; with `cache = "windows"`
they run once per window and caption before the first step, never inside it.

Each step: batch (cached latents + text embeddings) -> the step's random draws (a function of seed, step
and global sample index, so resumes and rank counts do not change them) -> loss -> backward -> clip -> AdamW -> LR schedule -> EMA -> metrics -> checkpoint
every `save_every` steps and at the end. A non-finite loss stops the run, naming the step; the last
checkpoint, written before it, is intact. A stop signal (SIGTERM, SIGINT, SIGUSR1) ends the run after the
current step with a checkpoint (train/stop_signals.py).

The run folder is owned for the whole run (train/run_folder.py): one run at a time, and a resume only
with the recipe values the checkpoints were trained with.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict)

from cosmos_engine.atomic import remove_stale_temporaries
from cosmos_engine.config.schema import LoraConfig, ModelConfig, Recipe, TrainConfig
from cosmos_engine.errors import UserError
from cosmos_engine.models.cosmos_dit import CosmosDiT
from cosmos_engine.models.flavors import dit_config, parameter_dtype
from cosmos_engine.models import lora as lora_lib
from cosmos_engine.models.state_dict import build_dit
from cosmos_engine.parallel.distributed import Distributed, setup_distributed
from cosmos_engine.parallel.parallelize import apply_activation_checkpointing, apply_fsdp, apply_fsdp_flat
from cosmos_engine.train import ema as ema_lib
from cosmos_engine.train import optim, step as step_lib
from cosmos_engine.train.checkpoint import CheckpointManager
from cosmos_engine.train.data import TrainingData, build_training_data
from cosmos_engine.train.metrics import MetricsProcessor, StepTimes, dit_forward_flops
from cosmos_engine.train.run_folder import RunFolderOptions, claim_run_folder, record_recipe
from cosmos_engine.train.stop_signals import RunStopped, StopRequests, signal_name

log = logging.getLogger(__name__)

class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class Diffusion(nn.Module):
    """The trained network and its EMA under the official checkpoint names `net.*` and `net_ema.*`."""

    def __init__(self, net: nn.Module, net_ema: nn.Module | None):
        super().__init__()
        self.net = net
        if net_ema is not None:
            self.net_ema = net_ema


def build_model(model_cfg: ModelConfig, train_cfg: TrainConfig, dist_info: Distributed, seed: int,
                trust_checkpoint: bool = False, lora_cfg: LoraConfig | None = None) -> Diffusion:
    """The DiT and its fp32 EMA, checkpointed and (several ranks) sharded, with the initial weights.

    One process: built on the meta device, materialized, loaded or initialised (`build_dit`), wrapped.
    Several ranks (torchtitan's order): built on the meta device, activation-checkpointed, FSDP2-sharded,
    then materialized shard by shard; the weights (the checkpoint, or the seeded random init) are read into
    host memory and each rank copies its shards from them, so no device ever holds the whole model.
    train.precision "bf16": parameters in model.dtype (the official pure-bf16 mode; gradients and Adam moments
    follow the parameters); "fp32-master" and "fp32": fp32 parameters, gradients and moments (fp32-master
    computes in bf16 under autocast, see `compute_context`).

    With [lora] enabled the DiT gets PEFT adapters (models/lora.py) after its weights are loaded, seeded like
    the random init; only they train, in fp32. The frozen base is kept in model.dtype unless precision is
    "fp32" (it has no gradients or moments, so "fp32-master" gains nothing from an fp32 copy of it), and the
    EMA averages the adapters only (`ema.adapter_ema`)."""
    lora_on = lora_cfg is not None and lora_cfg.enabled
    full_dtype = train_cfg.precision == "bf16" or (lora_on and train_cfg.precision == "fp32-master")
    dtype = parameter_dtype(model_cfg.dtype) if full_dtype else torch.float32
    cfg = dit_config(model_cfg.flavor)

    def initial_weights() -> nn.Module:
        # A random init depends on the seed alone, not on what ran before: the same in every run of the recipe.
        with torch.random.fork_rng(devices=[dist_info.device] if dist_info.device.type == "cuda" else []):
            torch.manual_seed(seed)
            # The training weights `net.*` (the official post-training init: a released `.pt` holds only
            # those; from a file with an EMA too, the EMA copy need not be read: beta is 0 at the first update).
            net = build_dit(cfg, model_cfg.checkpoint or None, device="cpu" if dist_info.world_size > 1
                            else dist_info.device, dtype=dtype, weights="net", trust_checkpoint=trust_checkpoint,
                            lora=lora_cfg)
            return lora_lib.inject_lora(net, lora_cfg) if lora_on else net

    def ema_of(net: nn.Module) -> nn.Module:
        if lora_on:
            return ema_lib.adapter_ema(net)
        if next(net.parameters()).is_meta:  # called under the meta device
            return CosmosDiT(cfg).float().requires_grad_(False)
        return copy.deepcopy(net).float().requires_grad_(False)

    if dist_info.world_size == 1:
        net = initial_weights()
        net_ema = ema_of(net) if train_cfg.ema else None
        apply_activation_checkpointing(net, model_cfg.activation_checkpointing)
        return Diffusion(net, net_ema)

    with torch.device("meta"):
        net = CosmosDiT(cfg).to(dtype)
        if lora_on:
            lora_lib.inject_lora(net, lora_cfg)
        net_ema = ema_of(net) if train_cfg.ema else None
    apply_activation_checkpointing(net, model_cfg.activation_checkpointing)
    apply_fsdp(net, dist_info.world_size, dist_info.device)
    if net_ema is not None:
        (apply_fsdp_flat if lora_on else apply_fsdp)(net_ema, dist_info.world_size, dist_info.device)
    for module in (net, net_ema):
        if module is not None:
            module.to_empty(device=dist_info.device)
    full = initial_weights().state_dict()  # host memory (a .pt checkpoint is memory-mapped, shared by ranks)
    whole = StateDictOptions(full_state_dict=True)  # each rank copies its own shard out of the full tensors
    set_model_state_dict(net, full, options=whole)
    if net_ema is not None:
        ema_keys = {k for k, _ in net_ema.named_parameters()} if lora_on else full.keys()
        set_model_state_dict(net_ema, {k: v.float() if v.is_floating_point() else v for k, v in full.items()
                                       if k in ema_keys}, options=whole)
    return Diffusion(net, net_ema)


def compute_context(precision: str, device: torch.device):
    """fp32-master: the fp32 parameters are the master weights and the matmuls run in bf16 (autocast casts
    each weight as it is used, so gradients and Adam state stay fp32); the DiT's fp32 islands stay fp32."""
    if precision == "fp32-master":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _trainer_state(iteration: int, data: TrainingData) -> dict:
    """Tensors only, so resuming never unpickles anything. The step's random draws derive from (seed, step,
    sample), so the iteration is all the RNG state there is; the data sampler's state is a few integers."""
    return {"iteration": torch.tensor(iteration), "data": {k: torch.tensor(v) for k, v in data.state_dict().items()}}


def post_train(recipe: Recipe, run_dir: Path, *, trust_checkpoint: bool = False,
               folder_options: RunFolderOptions = RunFolderOptions()) -> dict:
    """Run (or resume) post-training of `recipe` in `run_dir`; return the last step's metrics.

    The whole recipe is taken (not only the tables the loop reads) because the run folder records its
    fingerprint. `trust_checkpoint` allows arbitrary pickled objects in `model.checkpoint` and in the run's
    own checkpoints (see cosmos_engine/dcp_io.py). Raises RunStopped after a stop signal's checkpoint."""
    dist_info = setup_distributed()
    with claim_run_folder(run_dir, recipe, folder_options, dist_info.is_main) as changed:
        with StopRequests(dist_info.device) as stop:
            return _train(recipe, run_dir, dist_info, stop, trust_checkpoint, changed)


def _train(recipe: Recipe, run_dir: Path, dist_info: Distributed, stop: StopRequests, trust_checkpoint: bool,
           changed: list[str]) -> dict:
    job, model_cfg, data_cfg, train_cfg, ckpt_cfg = recipe.job, recipe.model, recipe.data, recipe.train, recipe.checkpoint
    manager = CheckpointManager(run_dir / "checkpoints", ckpt_cfg.keep_last, trust_checkpoint)
    if dist_info.is_main:
        manager.remove_leftovers()
        remove_stale_temporaries(run_dir)
    latest = manager.latest() if ckpt_cfg.resume else None  # before the expensive set-up: a hostile file stops here

    if recipe.lora.enabled:  # a wrong target or rank is reported before the cache is built
        lora_lib.check_targets(dit_config(model_cfg.flavor), recipe.lora)
    data = build_training_data(model_cfg, data_cfg, train_cfg, job.seed, dist_info.rank, dist_info.world_size,
                               dist_info.device)
    model = build_model(model_cfg, train_cfg, dist_info, job.seed, trust_checkpoint, recipe.lora)
    opt = optim.build_optimizer(model.net.parameters(), lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps,
                                weight_decay=train_cfg.weight_decay)
    scheduler = optim.build_scheduler(opt, train_cfg.warmup_steps)
    sd_options = StateDictOptions(flatten_optimizer_state_dict=True)

    def parts(iteration: int) -> dict:
        return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt, options=sd_options),
                "scheduler": scheduler.state_dict(), "trainer": _trainer_state(iteration, data)}

    # A LoRA run's checkpoints carry its adapter config (PEFT's adapter_config.json), for `convert`.
    extra_files = {lora_lib.CONFIG_FILE: lora_lib.config_json(recipe.lora)} if recipe.lora.enabled else {}
    start = 0
    if latest is not None:
        state = parts(0)
        manager.load(latest, state)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"], options=sd_options)
        scheduler.load_state_dict(state["scheduler"])
        # The recipe's values (equal to the saved ones unless --allow-recipe-change) drive the next steps.
        optim.set_hyperparameters(opt, scheduler, lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps,
                                  weight_decay=train_cfg.weight_decay)
        start = int(state["trainer"]["iteration"])
        data.load_state_dict({k: int(v) for k, v in state["trainer"]["data"].items()})
        log.info("resumed from %s at step %d", latest, start)
    if changed and dist_info.is_main:  # --allow-recipe-change, and the checkpoint took the new values
        record_recipe(run_dir, recipe)

    flops = dit_forward_flops(dit_config(model_cfg.flavor), data.latent_thw, data.text_tokens)
    metrics = MetricsProcessor(run_dir, dist_info.device, flops, data.tokens_per_sample, dist_info.world_size,
                               dist_info.is_main)
    metrics.forget_after(start)  # steps logged after the checkpoint we resume from are redone
    progress = _Progress(start, train_cfg.max_steps, dist_info.is_main)
    record: dict = {}
    params = list(model.net.parameters())
    saved = start
    try:
        for iteration in range(start, train_cfg.max_steps):
            signum = stop.requested()  # collective: every rank stops at the same step
            if signum:
                _stop(signum, iteration, saved, manager, lambda done: manager.save(done, parts(done), extra_files))
            clock = PhaseClock(dist_info.device)
            x0, text = next(data)
            clock.lap("data")
            global_batch = train_cfg.batch_size * dist_info.world_size
            samples = [iteration * global_batch + dist_info.rank * train_cfg.batch_size + i
                       for i in range(train_cfg.batch_size)]
            draws = step_lib.draw_for_samples(job.seed, iteration, samples, x0.shape, train_cfg.text_dropout,
                                              dict(enumerate(train_cfg.conditional_frames_probs)))
            with compute_context(train_cfg.precision, dist_info.device):
                loss, _ = step_lib.forward_loss(model.net, x0, text, draws)
            loss_value = _global_mean(loss.detach())
            clock.lap("forward")
            if not math.isfinite(loss_value):
                last = manager.latest()
                raise TrainingDiverged(f"the loss is {loss_value} at step {iteration + 1}; stopping. The last good "
                                       f"checkpoint is {last if last else 'none (no checkpoint was written yet)'}")
            loss.backward()
            clock.lap("backward")
            norm, _ = optim.clip_grad_norm(params, train_cfg.grad_clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            scheduler.step()
            opt.zero_grad(set_to_none=True)
            clock.lap("optimizer")
            if hasattr(model, "net_ema"):
                ema_lib.update_ema(model.net_ema, model.net, ema_lib.ema_beta(iteration))
            clock.lap("ema")
            done = iteration + 1
            times = StepTimes(data_wait=clock.phases["data"], total=clock.total, phases=clock.phases)
            if done % train_cfg.log_every == 0 or done == train_cfg.max_steps:
                record = metrics.record(done, loss_value, float(norm), lr, train_cfg.batch_size, times)
                progress.update(done, record)
            if done % ckpt_cfg.save_every == 0 or done == train_cfg.max_steps:
                manager.save(done, parts(done), extra_files)
                saved = done
    finally:
        metrics.close()
        progress.close()
    return record


def _stop(signum: int, done: int, saved: int, manager: CheckpointManager, save) -> None:
    """Save the steps done since the last checkpoint (collective, `save(done)`) and raise RunStopped."""
    if done > saved:
        folder = save(done)
        what = f"checkpoint {folder.name} saved"
    else:
        latest = manager.latest()
        what = f"checkpoint {latest.name} is the latest" if latest else "no step was done yet"
    raise RunStopped(f"stopped by {signal_name(signum)} at step {done}; {what}; rerun the same command to resume",
                     signum)


class PhaseClock:
    """Wall time of the phases of one step. On a GPU each lap synchronizes, so the phases are real (the sync
    costs a little overlap between phases)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.phases[name] = now - self.last
        self.last = now

    @property
    def total(self) -> float:
        return self.last - self.start


def _global_mean(value: torch.Tensor) -> float:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value.item()


class _Progress:
    """A tqdm bar on rank 0 showing step, loss and throughput (nothing on other ranks)."""

    def __init__(self, start: int, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stdout)
        self.position = start

    def update(self, step: int, record: dict) -> None:
        if self.bar is None:
            return
        self.bar.update(step - self.position)
        self.position = step
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", sps=f"{record['samples_per_s']:.2f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
