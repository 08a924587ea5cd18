"""The recipe schema: one frozen dataclass per TOML table, with production defaults.

Each field's docstring (the string literal under it) says what it means; `cosmos-engine check --help-keys`
and the loader's error messages use them. Range rules are in `Field(...)` metadata so the loader can
enforce them with messages that name the key. Path fields (`path=True`) may use `~` and `$VARIABLES`;
relative ones resolve against the working directory. Each job receives only the tables it needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from cosmos_engine.prompts import DEFAULT_NEGATIVE_PROMPT

# What infer.input_path accepts (a JSON sample file's input_path too).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".mp4",)


def spec(default: Any, *, min: float | None = None, max: float | None = None, doc: str = "", path: bool = False) -> Any:
    """A dataclass field with a default, an optional inclusive numeric range and its documentation. `path=True`
    marks a file or folder: the loader expands `~` and environment variables in it."""
    return field(default=default, metadata={"min": min, "max": max, "doc": doc, "path": path})


@dataclass(frozen=True)
class JobConfig:
    """[job]: where the run lives. The run folder is $IMAGINAIRE_OUTPUT_ROOT/project/group/name, as the
    official trainer lays it out (default root /tmp/imaginaire4-output)."""

    project: str = spec("cosmos_predict_v2p5", doc="First level of the run folder.")
    group: str = spec("video2world", doc="Second level of the run folder.")
    name: str = spec("2b_cosmos_nemo_assets", doc="Run name: third level of the run folder.")
    output_root: str = spec("", doc="Root of all run folders; empty means $IMAGINAIRE_OUTPUT_ROOT or /tmp/imaginaire4-output.", path=True)
    seed: int = spec(0, min=0, max=2**63 - 1, doc="Seed of every random stream (offset by the rank).")


@dataclass(frozen=True)
class ModelConfig:
    """[model]: the networks and where their weights come from."""

    flavor: Literal["2b", "tiny"] = spec("2b", doc='DiT size: "2b" (the official 2,059,174,912 parameters) or "tiny" (CPU tests).')
    checkpoint: str = spec("", doc="Initial DiT weights (their net.* entries): an official .pt, a converted file, a DCP folder or a diffusers transformer folder; empty = random init.", path=True)
    dtype: Literal["bfloat16", "float32"] = spec("bfloat16", doc='Parameter dtype of the DiT: "bfloat16" (official) or "float32" (CPU).')
    activation_checkpointing: Literal["none", "full", "selective"] = spec(
        "selective", doc='"none", "full" (recompute each block) or "selective" (keep attention outputs, recompute the rest).')
    vae_path: str = spec("", doc="Wan2.1 VAE weights (.pth); empty = random init (tiny recipes only).", path=True)
    vae_tiled: bool = spec(False, doc="Encode/decode the VAE in overlapping spatial tiles to bound memory.")
    vae_dtype: Literal["auto", "bfloat16", "float32"] = spec(
        "auto", doc='Compute dtype of the VAE: "auto" = bfloat16 on a GPU (as the official tokenizer runs) and float32 on the CPU (bf16 convolutions are slow there), or either dtype.')
    text_encoder_path: str = spec("", doc="Local folder of the Reason1 (Qwen2.5-VL) text encoder; empty = tiny random encoder.", path=True)


# The official LoRA targets (`lora_target_modules` of the official LoRA experiment); our module names are the
# official ones, so they name the same layers: every attention's q/k/v/output projection and both MLP linears.
OFFICIAL_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "output_proj", "mlp.layer1", "mlp.layer2")


@dataclass(frozen=True)
class LoraConfig:
    """[lora]: low-rank adapters (PEFT) on the DiT instead of full fine-tuning (official LoRA values by
    default). Only the adapters train; the frozen base stays in [model] dtype, the adapters in fp32."""

    enabled: bool = spec(False, doc="Train LoRA adapters on the frozen DiT instead of all of its weights.")
    rank: int = spec(32, min=1, max=65536, doc="Rank r of every adapter (official: 32).")
    alpha: float = spec(32.0, min=0.0, max=1e6, doc="LoRA alpha; an adapter adds (alpha / rank) B A x (official: 32).")
    dropout: float = spec(0.0, min=0.0, max=0.99, doc="Dropout on each adapter's input (official: 0).")
    target_modules: tuple[str, ...] = spec(
        OFFICIAL_LORA_TARGETS, doc="Layers to adapt, PEFT-style: a name matches a layer whose path ends with it "
                                   "(official: q_proj k_proj v_proj output_proj mlp.layer1 mlp.layer2).")


@dataclass(frozen=True)
class DataConfig:
    """[data]: the training videos and how they are read."""

    dataset_dir: str = spec("datasets/cosmos_nemo_assets", doc="Folder with videos/*.mp4 and metas/*.txt (see `cosmos-engine prepare`).", path=True)
    num_frames: int = spec(93, min=1, max=100_000, doc="Frames per training window; 1 + 4k for the causal VAE.")
    height: int = spec(704, min=16, max=8192, doc="Training height in pixels (multiple of 16).")
    width: int = spec(1280, min=16, max=8192, doc="Training width in pixels (multiple of 16).")
    decoder: Literal["auto", "pyav", "dali"] = spec("auto", doc='"auto" (DALI on a GPU when installed, else PyAV), "pyav" or "dali".')
    cache: Literal["windows", "off"] = spec("windows", doc='"windows": encode fixed windows once and train on cached latents; "off": encode online.')
    window_stride: int = spec(8, min=1, max=100_000, doc='With cache = "windows": frames between cached window starts, spread evenly from the first valid start to the last; training draws uniformly among them. 1 caches every start (the distribution of cache = "off").')
    max_cached_windows: int = spec(256, min=1, max=10**9, doc="With cache = \"windows\": at most this many cached windows per video; a video with more starts at window_stride gets this many, spread evenly over its valid starts.")
    num_workers: int = spec(4, min=0, max=256, doc="DataLoader worker processes.")


@dataclass(frozen=True)
class TrainConfig:
    """[train]: the optimisation loop (official NeMo values by default)."""

    max_steps: int = spec(1000, min=1, max=10**9, doc="Optimizer steps to run.")
    batch_size: int = spec(1, min=1, max=4096, doc="Samples per rank per step.")
    lr: float = spec(2**-14.5, min=0.0, max=1.0, doc="Peak learning rate of AdamW.")
    weight_decay: float = spec(1e-3, min=0.0, max=1.0, doc="AdamW weight decay.")
    betas: tuple[float, float] = spec((0.9, 0.999), min=0.0, max=1.0, doc="AdamW betas.")
    eps: float = spec(1e-8, min=0.0, max=1.0, doc="AdamW epsilon.")
    warmup_steps: int = spec(2000, min=0, max=10**9, doc="Linear warm-up length of the LR schedule.")
    grad_clip: float = spec(0.1, min=0.0, max=1e6, doc="Max global gradient norm; 0 disables clipping.")
    precision: Literal["bf16", "fp32-master", "fp32"] = spec(
        "bf16", doc='"bf16": params, grads and Adam moments in bf16 (official); "fp32-master": fp32 weights, grads and moments with bf16 matmuls (autocast); "fp32": all fp32 (CPU).')
    ema: bool = spec(True, doc="Keep an fp32 EMA copy of the DiT (official power EMA).")
    text_dropout: float = spec(0.2, min=0.0, max=1.0, doc="Probability of zeroing a sample's text embedding.")
    conditional_frames_probs: tuple[float, float, float] = spec(
        (0.5, 0.25, 0.25), min=0.0, max=1.0, doc="Probabilities of 0, 1 and 2 clean condition frames per sample "
                                                 "(text2world, image2world, video2world); they must sum to 1.")
    log_every: int = spec(1, min=1, max=10**9, doc="Steps between metric lines.")


@dataclass(frozen=True)
class CheckpointConfig:
    """[checkpoint]: DCP checkpoints in the official layout, resumable after a crash."""

    save_every: int = spec(200, min=1, max=10**9, doc="Steps between checkpoints (official NeMo: 200).")
    keep_last: int = spec(3, min=1, max=10**6, doc="Number of most recent checkpoints kept.")
    resume: bool = spec(True, doc="Resume from the run folder's latest complete checkpoint when there is one.")


@dataclass(frozen=True)
class InferConfig:
    """[infer]: one Video2World sample (`cosmos-engine infer`); the networks come from [model]. A JSON sample
    file in the official schema overrides the prompt, input, seed, guidance and size per sample."""

    prompt: str = spec("", doc="What the video shows.")
    negative_prompt: str = spec(DEFAULT_NEGATIVE_PROMPT, doc="Text of the unconditional branch of guidance (default: the official one).")
    input_path: str = spec("", doc="Conditioning image (.png .jpg .jpeg .webp) or video (.mp4); empty = text2world.", path=True)
    num_conditional_frames: int = spec(0, min=0, max=2, doc="Latent condition frames: 0 text2world, 1 image2world, 2 video2world.")
    guidance: float = spec(7.0, min=0.0, max=100.0, doc="Classifier-free guidance g: v = v_cond + g (v_cond - v_uncond).")
    num_steps: int = spec(35, min=1, max=1000, doc="UniPC steps (official: 35).")
    shift: float = spec(5.0, min=0.0, max=1000.0, doc='Shift of the "pre-trained" sampler\'s sigma schedule (official: 5).')
    sampler: Literal["pre-trained", "post-trained"] = spec(
        "pre-trained", doc='"pre-trained": the NeMo post-training experiment\'s sampler (use it for checkpoints we train); '
                           '"post-trained": the official 2B/post-trained default (Karras sigmas, condition frames at t=0.1).')
    seed: int = spec(1, min=0, max=2**32 - 1, doc="Seed of the initial noise (numpy RandomState, the same on every device).")
    num_frames: int = spec(93, min=1, max=100_000, doc="Output frames; 1 + 4k for the causal VAE (official: 93).")
    height: int = spec(704, min=16, max=8192, doc="Output height in pixels (multiple of 16).")
    width: int = spec(1280, min=16, max=8192, doc="Output width in pixels (multiple of 16).")
    fps: float = spec(16.0, min=1.0, max=1000.0, doc="Frame rate of the written MP4 (official: 16).")
    checkpoint_path: str = spec("", doc="DiT weights (model_ema_fp32.pt, model_ema_bf16.pt, model.pt, an official .pt, a DCP folder or a diffusers transformer folder); empty = model.checkpoint.", path=True)
    weights: Literal["ema", "net"] = spec("ema", doc='Which weights of a file holding both: "ema" or "net" (the training weights).')
    lora: tuple[str, ...] = spec((), doc='LoRA adapters to apply, unmerged, each "PATH[:SCALE]" (a PEFT folder, '
                                         'e.g. a converted run\'s lora_adapter/; scale 1 by default); several add up.',
                                 path=True)
    output_dir: str = spec("outputs", doc="Folder of the written <name>.mp4 and <name>.png.", path=True)
    name: str = spec("output", doc="File stem of the outputs.")
    tiled_decode: bool = spec(False, doc="Decode the VAE in overlapping spatial tiles to bound memory.")


@dataclass(frozen=True)
class Recipe:
    """A whole recipe file. Tables that are absent take their defaults."""

    job: JobConfig = field(default_factory=JobConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    infer: InferConfig = field(default_factory=InferConfig)


def tables() -> dict[str, type]:
    """TOML table name -> dataclass."""
    return {f.name: f.type if isinstance(f.type, type) else globals()[f.type] for f in dataclasses.fields(Recipe)}
