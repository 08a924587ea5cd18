"""`cosmos-engine plan`: where a recipe's memory goes per rank, how long a step or a video takes, and what to
change when it does not fit, before anything is loaded.

Memory comes from plan/memory.py, rates from plan/rates.py, FLOPs from train/metrics.py (the count MFU
uses). A plan is a list of memory lines per phase (the device peak is the largest phase), the host memory
per rank, what lands on disk, the time, and, when the peak exceeds the usable memory, ordered advice, each
item with its own predicted peak.

Time = GEMM FLOPs / GEMM rate + attention FLOPs / attention rate + memory-bound bytes / bandwidth. A
training step is forward + backward (GEMMs 2x, attention 2.5x the forward) + the recomputation of the
checkpointing mode + clip, AdamW and EMA (memory-bound over the sharded state). A video is num_steps DiT
forwards of batch 2 (classifier-free guidance) + the text encoder; VAE time and FSDP communication are not
modelled (FSDP2 prefetching overlaps the all-gathers with compute).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from cosmos_engine.config.schema import Recipe
from cosmos_engine.plan import memory as mem
from cosmos_engine.plan.rates import DEVICE_NAMES, Device, device as device_row

# What a plan leaves free: the CUDA context, NCCL buffers and allocator fragmentation (GPU); the OS and
# page cache (CPU).
USABLE_FRACTION = 0.92
TEXT_TOKENS = 512  # Reason1 embeddings (and the tiny stand-in's) are padded to 512 tokens
MODES_BY_MEMORY = ("none", "selective", "full")  # activation checkpointing, most memory first


@dataclass
class Line:
    name: str
    bytes: float
    note: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "bytes": int(self.bytes), "gib": self.bytes / mem.GIB, "note": self.note}


@dataclass
class Plan:
    job: str                      # "train" or "infer"
    device: Device
    gpus: int
    nodes: int
    settings: dict
    phases: dict[str, list[Line]]  # per-rank device memory of each phase
    host: list[Line]
    disk: list[Line]
    time: dict
    flops: dict
    advice: list[dict] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: sum(line.bytes for line in self.phases[p]))

    @property
    def peak_bytes(self) -> float:
        return sum(line.bytes for line in self.phases[self.peak_phase])

    @property
    def host_bytes(self) -> float:
        return sum(line.bytes for line in self.host)

    @property
    def usable_bytes(self) -> float:
        return USABLE_FRACTION * self.device.memory_bytes

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.usable_bytes

    def summary(self) -> str:
        """One line: job, device, peak per rank against memory, fit, and the predicted time."""
        where = f"{self.world_size} x {self.device.name}" if self.device.is_gpu else "cpu"
        verdict = "fits" if self.fits else "does NOT fit"
        unit = "s/step" if self.job == "train" else "s/video"
        return (f"plan: {self.settings['flavor']} {self.job} on {where} ({mem.bytes_human(self.device.memory_bytes)}): "
                f"peak {mem.bytes_human(self.peak_bytes)} per rank ({self.peak_phase}), {verdict}; "
                f"{self.time['total_s']:.3g} {unit} predicted")

    def as_dict(self) -> dict:
        return {"job": self.job, "device": self.device.as_dict(), "gpus": self.gpus, "nodes": self.nodes,
                "world_size": self.world_size, "settings": self.settings,
                "phases": {p: [line.as_dict() for line in lines] for p, lines in self.phases.items()},
                "peak_phase": self.peak_phase, "peak_bytes": int(self.peak_bytes),
                "usable_bytes": int(self.usable_bytes), "fits": self.fits,
                "host": [line.as_dict() for line in self.host], "host_bytes": int(self.host_bytes),
                "disk": [line.as_dict() for line in self.disk], "time": self.time, "flops": self.flops,
                "advice": self.advice, "summary": self.summary()}

    def table(self) -> str:
        out = [self.summary(), ""]
        for phase, lines in self.phases.items():
            total = sum(line.bytes for line in lines)
            mark = "  <- peak" if phase == self.peak_phase else ""
            out.append(f"device memory per rank, {phase}: {mem.bytes_human(total)}{mark}")
            out += [f"  {line.name:<34} {mem.bytes_human(line.bytes):>10}  {line.note}" for line in lines]
        out.append(f"usable: {mem.bytes_human(self.usable_bytes)} ({USABLE_FRACTION:.0%} of "
                   f"{mem.bytes_human(self.device.memory_bytes)}, {self.device.memory_source})")
        out.append(f"host memory per rank: {mem.bytes_human(self.host_bytes)}")
        out += [f"  {line.name:<34} {mem.bytes_human(line.bytes):>10}  {line.note}" for line in self.host]
        out.append("disk:")
        out += [f"  {line.name:<34} {mem.bytes_human(line.bytes):>10}  {line.note}" for line in self.disk]
        unit = "step" if self.job == "train" else "video"
        out.append(f"time per {unit}: {self.time['total_s']:.3g} s")
        out += [f"  {k:<34} {v:.3g} s" for k, v in self.time["parts_s"].items()]
        out.append(f"  FLOPs per sample forward: {self.flops['forward']:.3e} (GEMM {self.flops['gemm']:.3e}, "
                   f"attention {self.flops['attention']:.3e})")
        for kind in ("gemm", "attention", "bandwidth"):
            rate = getattr(self.device, kind)
            unit_rate = "B/s" if kind == "bandwidth" else "FLOP/s"
            out.append(f"  rate {kind:<9} {rate.value:.3e} {unit_rate}: {rate.source}")
        out.append("  not modelled: VAE time, data loading, FSDP communication (overlapped by prefetch)")
        if self.advice:
            out.append("does not fit; changes, in order (predicted peak per rank):")
            for item in self.advice:
                peak = f"{mem.bytes_human(item['peak_bytes'])}, {'fits' if item['fits'] else 'still does not fit'}" \
                    if item.get("peak_bytes") is not None else "not available yet"
                why = f" ({item['why']})" if item.get("why") and item.get("peak_bytes") is not None else ""
                out.append(f"  - {item['change']}: {peak}{why}")
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------- entry
def check_arguments(gpu: str, gpus: int, nodes: int) -> None:
    """ValueError with the valid names/ranges for a bad device or count."""
    if gpu not in DEVICE_NAMES:
        raise ValueError(f"--gpu {gpu!r} is not a known device; expected one of: {', '.join(DEVICE_NAMES)}")
    for name, value in (("--gpus", gpus), ("--nodes", nodes)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if gpu == "cpu" and gpus * nodes > 1:
        raise ValueError(f"--gpu cpu plans one process; got --gpus {gpus} --nodes {nodes}")


def make_plan(recipe: Recipe, job: str, gpu: str, gpus: int = 1, nodes: int = 1, cache_state: dict | None = None,
              advise: bool = True) -> Plan:
    """The plan of `recipe` ("train" or "infer") on `gpus` x `nodes` devices of kind `gpu`."""
    check_arguments(gpu, gpus, nodes)
    dev = device_row(gpu)
    if cache_state is None:
        cache_state = read_cache_state(recipe) if job == "train" else {}
    build = _train if job == "train" else _infer
    plan = build(recipe, dev, gpus, nodes, cache_state)
    if advise and not plan.fits:
        plan.advice = _advice(recipe, job, plan, cache_state)
    return plan


# --------------------------------------------------------------------------------------------- shared
def _dtype_bytes(name: str) -> int:
    return 2 if name == "bfloat16" else 4


def _vae_bytes(m, dev: Device) -> int:
    """Bytes per element of the VAE's weights and activations (`[model] vae_dtype` on this device)."""
    from cosmos_engine.models.flavors import vae_dtype

    return vae_dtype(m.vae_dtype, "cuda" if dev.is_gpu else "cpu").itemsize


def _host_lines(dev: Device, device_peak: float, world_size: int) -> list[Line]:
    if not dev.is_gpu:
        return [Line("process baseline", mem.CPU_PROCESS_BASELINE, "measured: torch + cosmos_engine + transformers "
                                                                  "imports, this machine"),
                Line("run overhead", mem.CPU_RUN_OVERHEAD, "measured on the tiny run: loaders, arenas"),
                Line("device memory (the CPU is the device)", device_peak, "the peak phase above")]
    return [Line("process baseline", mem.CPU_PROCESS_BASELINE, "measured on the CPU machine; the same imports"),
            Line("CUDA context and libraries", mem.CUDA_HOST_CONTEXT, "estimate, not measured")]


def _text_encoder_lines(model_cfg, e: int, prompts: int) -> tuple[list[Line], str]:
    params, extra, source = mem.text_encoder_params(model_cfg)
    lines = [Line("text encoder weights", params * e, f"{params / 1e9:.2f} B parameters ({source})")]
    if extra:
        lines.append(Line("text encoder load (vision tower, lm_head)", extra * e, "held while loading, then dropped"))
    if params:
        hidden = 3584
        batch = min(prompts, mem.TEXT_ENCODER_BATCH)
        lines.append(Line("text encoder activations", batch * TEXT_TOKENS * hidden * e * 30,
                          f"{batch} prompts x 512 tokens x all hidden states"))
    return lines, source


# ------------------------------------------------------------------------------------------- training
def read_cache_state(recipe: Recipe) -> dict:
    """What the dataset's cache folder already holds for this recipe's windows and captions, from the file
    names (the encoder hash in them cannot be checked without the weights): windows found / expected,
    captions found / expected. An unreadable dataset gives zeros (everything to encode)."""
    from cosmos_engine.data.cache import _short_hash, window_starts
    from cosmos_engine.data.dataset import load_records

    data = recipe.data
    dataset = Path(data.dataset_dir).expanduser().absolute()
    try:
        records = load_records(dataset)
    except Exception:  # noqa: BLE001 - any unreadable dataset means: nothing known to be cached
        return {"dataset": str(dataset), "readable": False, "windows": 0, "windows_cached": 0, "prompts": 1,
                "prompts_cached": 0}
    root = dataset / "cache"
    windows = cached = 0
    for record in records:
        fits = record.frames >= data.num_frames
        starts = window_starts(record.frames, data.num_frames, data.window_stride, data.max_cached_windows) if fits else []
        windows += len(starts)
        folder = root / "latents" / record.sha256
        for start in starts:
            pattern = f"start{start:06d}_n{data.num_frames}_{data.height}x{data.width}_*.safetensors"
            cached += any(folder.glob(pattern)) if folder.is_dir() else 0
    prompts = sorted({r.prompt for r in records})
    prompts_cached = sum(any((root / "text").glob(f"{_short_hash(p)}_*.safetensors")) for p in prompts)
    return {"dataset": str(dataset), "readable": True, "windows": windows, "windows_cached": cached,
            "prompts": max(len(prompts), 1), "prompts_cached": prompts_cached}


def _train(recipe: Recipe, dev: Device, gpus: int, nodes: int, cache_state: dict) -> Plan:
    from cosmos_engine.models.flavors import dit_config
    from cosmos_engine.train.metrics import dit_forward_flops_by_kind

    m, data, train, ckpt = recipe.model, recipe.data, recipe.train, recipe.checkpoint
    cfg = dit_config(m.flavor)
    world = gpus * nodes
    shard = mem.shard_size(world) if world > 1 else 1
    model_bytes = _dtype_bytes(m.dtype)
    lora = mem.lora_sizes(m.flavor, recipe.lora.rank, recipe.lora.target_modules) if recipe.lora.enabled else None
    # The trained (or, with LoRA, the frozen base's) parameter dtype, as train/trainer.py build_model sets it.
    param_bytes = model_bytes if train.precision == "bf16" or (lora and train.precision == "fp32-master") else 4
    e = 4 if train.precision == "fp32" else 2  # activations: fp32, or bf16 (params bf16, or autocast)
    if train.precision == "bf16" and m.dtype == "float32":
        e = 4
    sizes = mem.dit_sizes(m.flavor, param_bytes)
    P = sizes["params"]
    thw = mem.latent_thw(data.num_frames, data.height, data.width)
    L, N, B = mem.tokens_of(cfg, thw), TEXT_TOKENS, train.batch_size
    mode = m.activation_checkpointing
    sharded = f"/ {shard} (FSDP2 shard)" if shard > 1 else "(one rank, no sharding)"
    if lora is None:
        per_param = mem.state_bytes_per_param(train.precision, param_bytes)
        step = [Line("parameters", P * per_param["parameters"] / shard, f"{P:,} x {per_param['parameters']} B {sharded}"),
                Line("gradients", P * per_param["gradients"] / shard, f"{P:,} x {per_param['gradients']} B {sharded}"),
                Line("AdamW moments", P * per_param["adamw_moments"] / shard,
                     f"2 x {P:,} x {per_param['adamw_moments'] // 2} B {sharded}")]
        trained = P
    else:
        trained = lora["params"]
        step = [Line("frozen base parameters", P * param_bytes / shard, f"{P:,} x {param_bytes} B {sharded}"),
                Line("LoRA adapters (fp32)", trained * 4 / shard,
                     f"{trained:,} x 4 B (rank {recipe.lora.rank}, {lora['layers']} layers) {sharded}"),
                Line("adapter gradients", trained * 4 / shard, f"{trained:,} x 4 B {sharded}"),
                Line("adapter AdamW moments", trained * 8 / shard, f"2 x {trained:,} x 4 B {sharded}")]
    if train.ema:
        what = "EMA (fp32)" if lora is None else "adapter EMA (fp32)"
        step.append(Line(what, trained * 4 / shard, f"{trained:,} x 4 B {sharded}"))
    if shard > 1:
        step.append(Line("unsharded blocks (FSDP all-gather)", 3 * sizes["block_params"] * param_bytes,
                         "the block computed, the one prefetched, the last (kept after forward)"))
    rank = recipe.lora.rank

    def block_bytes(checkpointing: str) -> int:
        adapters = mem.lora_activation_bytes(lora["block"], L, N, rank, e) if lora and checkpointing == "none" else 0
        return mem.block_activation_bytes(cfg, L, N, e, checkpointing) + adapters

    per_block = block_bytes(mode)
    shared = mem.shared_activation_bytes(cfg, L, N, e, mode, frozen=lora is not None)
    if lora:
        shared += mem.lora_activation_bytes(lora["outside"], L, N, rank, e, inputs_counted=False)
    step.append(Line(f"activations ({mode})", B * (cfg.num_blocks * per_block + shared),
                     f"{cfg.num_blocks} blocks x {mem.bytes_human(B * per_block)} + shared; {B} x {L} tokens, {e} B"
                     + (", LoRA inputs included" if lora else "")))
    if mode != "none":
        step.append(Line("recomputed block (backward)", B * block_bytes("none"),
                         "one block's activations, rebuilt during its backward"))
    step.append(Line("backward transient", B * mem.backward_transient_bytes(cfg, L, e), "gradients of the [L, H] pair"))
    step.append(Line("attention workspace", B * 2 * L * cfg.num_heads * 4, "flash-style: O(L) statistics"))
    vae_p = mem.vae_params(m.flavor)
    vae_e = _vae_bytes(m, dev)
    vae_act = mem.vae_activation_bytes(m.flavor, data.height, data.width, vae_e, m.vae_tiled)
    tiled = "tiled" if m.vae_tiled else "untiled"
    if data.cache == "off":
        step += [Line("VAE weights (online encode)", vae_p * vae_e, f"{vae_p / 1e6:.0f} M parameters"),
                 Line(f"VAE encode activations ({tiled})", B * vae_act, "per window, inference mode")]
    phases = {"training step": step}

    # The cache build: before the DiT exists; VAE and text encoder together, each only if something is missing.
    missing_windows = cache_state.get("windows", 0) - cache_state.get("windows_cached", 0)
    missing_prompts = cache_state.get("prompts", 1) - cache_state.get("prompts_cached", 0)
    build: list[Line] = []
    if data.cache == "windows" and (missing_windows > 0 or not cache_state.get("readable", False)):
        build += [Line("VAE weights", vae_p * vae_e, f"{vae_p / 1e6:.0f} M parameters"),
                  Line(f"VAE encode activations ({tiled})", vae_act, "one window at a time")]
    if missing_prompts > 0:
        lines, _ = _text_encoder_lines(m, model_bytes, missing_prompts)
        build += lines
    if build:
        phases["cache build (before the DiT)"] = build

    step_peak = max(sum(line.bytes for line in lines) for lines in phases.values())
    host = _host_lines(dev, step_peak, world)
    text_in_memory = cache_state.get("prompts", 1) * N * cfg.text_in_channels * model_bytes
    host.append(Line("text embeddings in memory", text_in_memory, "every caption's embedding, read from the cache"))
    if world > 1:
        host.append(Line("initial weights (build)", P * param_bytes, "full state dict in host memory while sharding"))

    windows = cache_state.get("windows", 1) or 1
    ckpt_bytes = mem.checkpoint_bytes(m.flavor, train.precision, param_bytes, train.ema, lora)
    held = "model (net + fp32 EMA), optim" if lora is None else "model (base + adapters + adapter EMA), adapter optim"
    disk = [Line("checkpoint (one)", ckpt_bytes, f"{held}, scheduler, trainer"),
            Line(f"checkpoints x keep_last={ckpt.keep_last}", ckpt_bytes * ckpt.keep_last, "")]
    if data.cache == "windows":
        disk.append(Line("latent cache", mem.latent_cache_bytes(data.num_frames, data.height, data.width, vae_e, windows),
                         f"{windows} windows, {cache_state.get('windows_cached', 0)} already cached"))
    disk.append(Line("text embedding cache", mem.text_cache_bytes(cfg, N, model_bytes, cache_state.get("prompts", 1)),
                     f"{cache_state.get('prompts', 1)} captions, {cache_state.get('prompts_cached', 0)} already cached"))

    flops = dit_forward_flops_by_kind(cfg, thw, N)
    recompute = {"none": (0.0, 0.0), "selective": (1.0, 0.0), "full": (1.0, 1.0)}[mode]
    # Backward computes input gradients (1x the forward) and weight gradients (1x): a frozen base needs no
    # weight gradients, its adapters' cost is negligible beside the base's GEMMs.
    gemm_passes = 3.0 if lora is None else 2.0
    gemm_flops = B * flops["gemm"] * (gemm_passes + recompute[0])
    attn_flops = B * flops["attention"] * (3.5 + recompute[1])
    D, H = cfg.model_channels, int(cfg.model_channels * cfg.mlp_ratio)
    elementwise = B * cfg.num_blocks * L * (21 * D + 2 * H) * e * (3.0 + recompute[0])
    state_bytes = param_bytes if lora is None else 4  # of the trained parameters
    optimizer = trained / shard * (7 * state_bytes + 2 * state_bytes)  # AdamW read/write + clip's read of the grads
    ema = trained / shard * (8 + state_bytes) if train.ema else 0.0
    parts = {"GEMMs (forward, backward, recompute)": gemm_flops / dev.gemm.value,
             "attention": attn_flops / dev.attention.value,
             "memory-bound elementwise": elementwise / dev.bandwidth.value,
             "clip + AdamW": optimizer / dev.bandwidth.value, "EMA": ema / dev.bandwidth.value}
    settings = {"flavor": m.flavor, "precision": train.precision, "dtype": m.dtype, "activation_checkpointing": mode,
                "lora": {"rank": rank, "alpha": recipe.lora.alpha, "layers": lora["layers"],
                         "trainable_params": trained} if lora else None,
                "batch_size": B, "frames": data.num_frames, "height": data.height, "width": data.width,
                "latent_thw": list(thw), "tokens": L, "text_tokens": N, "cache": data.cache, "vae_tiled": m.vae_tiled,
                "shard": shard, "cache_state": cache_state}
    return Plan("train", dev, gpus, nodes, settings, phases, host, disk,
                {"total_s": sum(parts.values()), "parts_s": parts},
                {"forward": flops["gemm"] + flops["attention"], **flops, "step": gemm_flops + attn_flops,
                 "model_flops_per_step": 3.0 * B * (flops["gemm"] + flops["attention"])})


# ------------------------------------------------------------------------------------------- sampling
def _infer(recipe: Recipe, dev: Device, gpus: int, nodes: int, cache_state: dict) -> Plan:
    from cosmos_engine.models.flavors import dit_config
    from cosmos_engine.train.metrics import dit_forward_flops_by_kind

    m, inf = recipe.model, recipe.infer
    cfg = dit_config(m.flavor)
    world = gpus * nodes
    e = _dtype_bytes(m.dtype)
    sizes = mem.dit_sizes(m.flavor, e)
    thw = mem.latent_thw(inf.num_frames, inf.height, inf.width)
    L, N = mem.tokens_of(cfg, thw), TEXT_TOKENS
    # Ranks: 2 split the guidance branches (batch 1 each); more split the tokens (context parallel).
    batch = 1 if world == 2 else 2
    tokens = L // world if world > 2 else L
    prompts = 2  # the prompt and the negative prompt
    text_lines, _ = _text_encoder_lines(m, e, prompts)
    vae_p = mem.vae_params(m.flavor)
    weights = Line("DiT weights", sizes["state_bytes"], f"{sizes['params']:,} parameters x {e} B")
    vae_e = _vae_bytes(m, dev)
    vae_w = Line("VAE weights", vae_p * vae_e, f"{vae_p / 1e6:.0f} M parameters")
    embeddings = Line("text embeddings", prompts * N * cfg.text_in_channels * e, "prompt and negative prompt")
    latents = Line("UniPC state", 8 * 16 * thw[0] * thw[1] * thw[2] * 4, "noise, x0, model outputs (fp32)")
    sampling = [weights, vae_w, embeddings, latents,
                Line("block transient (no grad)", batch * mem.sampling_transient_bytes(cfg, tokens, N, e),
                     f"batch {batch} x {tokens} tokens" + (" (context parallel)" if world > 2 else "")),
                Line("text projection", batch * N * (cfg.text_in_channels + 2 * cfg.crossattn_emb_channels) * e, "")]
    tiled = inf.tiled_decode or m.vae_tiled
    decode = [weights, vae_w, latents,
              Line(f"VAE decode activations ({'tiled' if tiled else 'untiled'})",
                   mem.vae_activation_bytes(m.flavor, inf.height, inf.width, vae_e, tiled), "frame-chunked, causal cache"),
              Line("decoded video", 3 * inf.num_frames * inf.height * inf.width * vae_e * 2, "the output and its uint8 copy")]
    phases = {"text encoding": [*text_lines, embeddings], "sampling": sampling, "VAE decode": decode}
    if inf.num_conditional_frames:
        phases["condition encode"] = [vae_w, Line("VAE encode activations",
                                                  mem.vae_activation_bytes(m.flavor, inf.height, inf.width, vae_e, m.vae_tiled), "")]
    peak = max(sum(line.bytes for line in lines) for lines in phases.values())
    host = _host_lines(dev, peak, world)
    disk = [Line("output video", 3 * inf.num_frames * inf.height * inf.width // 50, "H.264 MP4, rough")]

    flops = dit_forward_flops_by_kind(cfg, thw, N)
    per_rank = 1.0 / world if world > 1 else 1.0
    gemm = 2 * inf.num_steps * flops["gemm"] * per_rank
    attn = 2 * inf.num_steps * flops["attention"] * per_rank
    text_params, _, _ = mem.text_encoder_params(m)
    D, H = cfg.model_channels, int(cfg.model_channels * cfg.mlp_ratio)
    elementwise = 2 * inf.num_steps * cfg.num_blocks * L * (21 * D + 2 * H) * e * per_rank
    parts = {"DiT GEMMs (num_steps x 2 branches)": gemm / dev.gemm.value, "DiT attention": attn / dev.attention.value,
             "memory-bound elementwise": elementwise / dev.bandwidth.value,
             "text encoder": 2 * text_params * N * prompts / dev.gemm.value}
    settings = {"flavor": m.flavor, "dtype": m.dtype, "frames": inf.num_frames, "height": inf.height,
                "width": inf.width, "latent_thw": list(thw), "tokens": L, "text_tokens": N, "num_steps": inf.num_steps,
                "guidance": inf.guidance, "tiled_decode": tiled}
    return Plan("infer", dev, gpus, nodes, settings, phases, host, disk, {"total_s": sum(parts.values()), "parts_s": parts},
                {"forward": flops["gemm"] + flops["attention"], **flops, "video": gemm + attn})


# --------------------------------------------------------------------------------------------- advice
def _with(recipe: Recipe, table: str, **values) -> Recipe:
    return dataclasses.replace(recipe, **{table: dataclasses.replace(getattr(recipe, table), **values)})


def _advice(recipe: Recipe, job: str, plan: Plan, cache_state: dict) -> list[dict]:
    """Changes that lower the peak, in the order the issue asks for (activation checkpointing, more GPUs,
    LoRA, tiled VAE, fewer frames). Each applies on top of the ones before it, so the list reads as a path
    to a plan that fits; each item carries the predicted peak per rank with it and the ones before."""
    gpu = plan.device.name
    state = {"recipe": recipe, "gpus": plan.gpus, "nodes": plan.nodes, "totals": _phase_totals(plan)}
    advice: list[dict] = []

    def step(change: str, why: str = "", **new) -> None:
        candidate = {**state, **new}
        p = make_plan(candidate["recipe"], job, gpu, candidate["gpus"], candidate["nodes"], cache_state, advise=False)
        if _phase_totals(p) >= state["totals"]:
            return  # lowers neither the peak nor the next phase: not worth suggesting
        prefix = "then " if advice else ""
        advice.append({"change": prefix + change, "peak_bytes": int(p.peak_bytes), "fits": p.fits, "why": why})
        state.update(candidate, totals=_phase_totals(p))

    if job == "train":
        mode = recipe.model.activation_checkpointing
        for stronger in MODES_BY_MEMORY[MODES_BY_MEMORY.index(mode) + 1:]:
            if not _fits(state, job, gpu, cache_state):
                step(f'--set model.activation_checkpointing="{stronger}"',
                     recipe=_with(state["recipe"], "model", activation_checkpointing=stronger))
        if plan.device.is_gpu:
            for count in (2, 4, 8):
                if count > state["gpus"] * state["nodes"] and not _fits(state, job, gpu, cache_state):
                    fits = make_plan(state["recipe"], job, gpu, count, 1, cache_state, advise=False).fits
                    if fits or count == 8:
                        step(f"--gpus {count}", "FSDP2 shards the training state over up to 8 ranks", gpus=count, nodes=1)
        if not recipe.lora.enabled and not _fits(state, job, gpu, cache_state):
            step("--set lora.enabled=true", f"LoRA rank {recipe.lora.rank} instead of full fine-tuning: only the "
                 "adapters have gradients, AdamW moments and an EMA",
                 recipe=_with(state["recipe"], "lora", enabled=True))
        if not recipe.model.vae_tiled and not _fits(state, job, gpu, cache_state):
            # the cache build (or the online encode) holds the VAE's activations
            step("--set model.vae_tiled=true", recipe=_with(state["recipe"], "model", vae_tiled=True))
        if recipe.train.batch_size > 1 and not _fits(state, job, gpu, cache_state):
            step("--set train.batch_size=1", recipe=_with(state["recipe"], "train", batch_size=1))
    else:
        if not (recipe.infer.tiled_decode or recipe.model.vae_tiled):
            step("--set infer.tiled_decode=true", recipe=_with(recipe, "infer", tiled_decode=True))
        if recipe.model.dtype == "float32" and not _fits(state, job, gpu, cache_state):
            step('--set model.dtype="bfloat16"', recipe=_with(state["recipe"], "model", dtype="bfloat16"))
    table = "data" if job == "train" else "infer"
    if not _fits(state, job, gpu, cache_state):
        frames = _largest_fitting_frames(state["recipe"], job, gpu, state["gpus"], state["nodes"], cache_state, table)
        if frames:
            step(f"--set {table}.num_frames={frames}", "the most frames that fit",
                 recipe=_with(state["recipe"], table, num_frames=frames))
    return advice


def _phase_totals(plan: Plan) -> tuple[float, ...]:
    """Each phase's memory, largest first: a change helps when it lowers this (lexicographically)."""
    return tuple(sorted((sum(line.bytes for line in lines) for lines in plan.phases.values()), reverse=True))


def _fits(state: dict, job: str, gpu: str, cache_state: dict) -> bool:
    return make_plan(state["recipe"], job, gpu, state["gpus"], state["nodes"], cache_state, advise=False).fits


def _largest_fitting_frames(recipe: Recipe, job: str, gpu: str, gpus: int, nodes: int, cache_state: dict,
                            table: str) -> int | None:
    """The largest 1 + 4k frame count below the recipe's that fits, or None."""
    current = getattr(recipe, table).num_frames
    for frames in range(current - 4, 0, -4):
        if make_plan(_with(recipe, table, num_frames=frames), job, gpu, gpus, nodes, cache_state, advise=False).fits:
            return frames
    return None
