"""Analytic memory of a training step or a sampled video, per rank, in bytes. Nothing is loaded: parameter
counts and state-dict sizes come from the networks built on the meta device.

Notation: B samples per rank, L video tokens per sample, N text tokens (512), D model width, H MLP width,
h heads of size d, e bytes of the compute dtype (bf16: 2, fp32: 4); fp32 islands are 4 bytes.

Training state per rank (train/optim.py, train/ema.py, TrainConfig.precision), P parameters, sharded over
S = min(8, world size) ranks by FSDP2 (parallel/parallelize.py; replicated across the other mesh dimension):
  bf16:         parameters 2P + gradients 2P + AdamW moments 4P (they follow the parameter dtype) + EMA 4P
  fp32, fp32-master: 4P + 4P + 8P + 4P (fp32-master casts each weight to bf16 where it is used)
  all divided by S; with S > 1 the unsharded parameters of the block being computed and of the one
  prefetched (2 blocks, and the last block that stays unsharded after forward) are added.

LoRA ([lora] enabled; models/lora.py): the frozen base keeps P_base x e_base (model.dtype; fp32 with
precision "fp32") and has no gradients, moments or EMA; the P_a adapter parameters (r (in + out) per adapted
layer) are fp32 with fp32 gradients, AdamW moments (8 P_a) and EMA (4 P_a), all sharded alike.

Activations saved for backward (models/cosmos_dit.py Block.forward; measured with saved-tensor hooks and
malloc accounting on the tiny DiT, tests/test_plan.py checks the formula). Per block and sample:
  none:      L (18 D e + 2 H e + (5h + 6) 4) + N (3 D e + 4h)
             18 [L, D] tensors: each stage's input x and AdaLN-LayerNorm output (3 + 3), self-attention q and k
             before and after the RMSNorm+RoPE op, v, the attention output and the projected output (7),
             cross-attention q before and after its norm, its output and the projected output (4), the MLP
             output (1); 2 [L, H] (the first linear's output and the GELU output); per-head fp32 norm and
             softmax statistics; the cross-attention k (before and after its norm) and v over the text.
  full:      L D e (the block's input; backward recomputes the rest)
  selective: L D e + 2 (L D e + 4 L h) (the input and both attention kernels' outputs and log-sum-exps)
  LoRA adds, per adapted layer with T input tokens (L, or N for the cross-attention k and v): its
             down-projection's output T r 4 (kept for the up-projection's gradient), and, with a base that is
             not fp32, the fp32 copy of its input T C_in 4 that PEFT makes for the adapter (an upper bound:
             some base-dtype tensors the frozen layers no longer need are then freed). The frozen patch
             embedding, text projection and final linear keep no inputs (see shared_activation_bytes).
Shared by all blocks: the RoPE table 2 L d 4, the patch embedding input L C_patch e, and the text
projection's input and outputs N (C_text + 2 Dc) e. The final layer (an fp32 island) keeps 2 L D 4 (none) or
L D e (checkpointed). With checkpointing, backward recomputes one block at a time: one block of the "none"
activations is added to the peak. Backward adds a transient of about two [L, H] and two [L, D] tensors.

Sampling (no gradients, batch 2B with classifier-free guidance): the weights, plus one block's transient
(q, k, v, attention output, the [L, H] pair and the residual), the latent state of UniPC.

The VAE (models/wan_vae.py) encodes and decodes chunk by chunk with a causal cache, so its activation peak
depends on the pixels of one frame, not on the frame count: measured on this CPU with the tiny (width 16)
and the 2B (width 96) VAE, about 20 MiB + 50 x width x pixels x e bytes (tiled: the pixels of one
512-pixel tile with its overlap).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path


GIB = 2**30
MIB = 2**20

VAE_ACTIVATION_BASE = 20 * MIB
VAE_ACTIVATION_PER_PIXEL_CHANNEL = 50  # elements per (pixel x VAE width), measured (see the module docstring)
VAE_TILE_PIXELS = 512 * 512
TEXT_ENCODER_BATCH = 8  # TextEncoder's batch_size

# The process baseline of a CPU run: peak RSS after importing torch, cosmos_engine's trainer and transformers'
# Qwen2.5-VL (what `run` and `infer` import before their first tensor), measured on this machine
# (AMD EPYC, torch 2.14.1+cu130, 2026-12-02) with
#   python -c "import resource, cosmos_engine.cli, cosmos_engine.train.trainer, cosmos_engine.train.data,
#              transformers; from transformers import Qwen2_5_VLForConditionalGeneration;
#              print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
# benchmarks/e2e/bench_plan.py measures it again next to the prediction.
CPU_PROCESS_BASELINE = 861 * MIB
# Our own DataLoader, tokenizers, av and glibc arenas in a run beyond the imports: measured on the tiny run
# (peak RSS minus the baseline minus the model terms), same machine and date.
CPU_RUN_OVERHEAD = 180 * MIB
# A GPU rank's host memory besides the CPU baseline: the CUDA context and its libraries; not measured here
# (no GPU was lent), an estimate.
CUDA_HOST_CONTEXT = 1 * GIB

# DCP's bytes per state-dict entry beyond the tensor data (framing in the data file + its `.metadata` record),
# and the scheduler/ and trainer/ parts: measured on a tiny checkpoint (torch 2.14.1, 2026-12-02).
DCP_MODEL_BYTES_PER_ENTRY = 1810
DCP_OPTIM_BYTES_PER_ENTRY = 1495
OPTIM_ENTRIES_PER_TENSOR = 15  # exp_avg, exp_avg_sq, step + AdamW's 12 param-group values (flattened)
SCHEDULER_AND_TRAINER_BYTES = 21_050
LORA_CONFIG_BYTES = 1_400  # adapter_config.json beside a LoRA checkpoint's parts


def latent_thw(frames: int, height: int, width: int) -> tuple[int, int, int]:
    return 1 + (frames - 1) // 4, height // 8, width // 8


def tokens_of(cfg, thw: tuple[int, int, int]) -> int:
    t, h, w = thw
    return (t // cfg.patch_temporal) * (h // cfg.patch_spatial) * (w // cfg.patch_spatial)


@functools.cache
def dit_sizes(flavor: str, dtype_bytes: int) -> dict:
    """Parameter count, per-block parameter count and the model-part state-dict bytes (net.* in the parameter
    dtype; int64 counters stay int64) of the DiT, from the network on the meta device."""
    import torch

    from cosmos_engine.models.cosmos_dit import CosmosDiT
    from cosmos_engine.models.flavors import dit_config

    with torch.device("meta"):
        net = CosmosDiT(dit_config(flavor))
    params = sum(p.numel() for p in net.parameters())
    block = sum(p.numel() for p in net.blocks[0].parameters())
    entries = net.state_dict()
    state = sum(t.numel() * (t.element_size() if not t.is_floating_point() else dtype_bytes) for t in entries.values())
    state_fp32 = sum(t.numel() * (t.element_size() if not t.is_floating_point() else 4) for t in entries.values())
    return {"params": params, "block_params": block, "state_bytes": state, "state_bytes_fp32": state_fp32,
            "entries": len(entries), "param_tensors": sum(1 for _ in net.parameters())}


@functools.cache
def lora_sizes(flavor: str, rank: int, targets: tuple[str, ...]) -> dict:
    """The adapters a [lora] table adds to the DiT, from the network on the meta device: parameter count, the
    number of adapted layers, and per block the (token kind, input width) of each adapted layer ("video" for
    the L video tokens, "text" for the N text tokens), plus those of the layers outside the blocks."""
    import torch

    from cosmos_engine.config.schema import LoraConfig
    from cosmos_engine.models import lora
    from cosmos_engine.models.cosmos_dit import CosmosDiT
    from cosmos_engine.models.flavors import dit_config

    with torch.device("meta"):
        net = CosmosDiT(dit_config(flavor))
    cfg = LoraConfig(enabled=True, rank=rank, target_modules=targets)
    modules = dict(net.named_modules())
    layers = lora.target_layers(net, cfg)

    def kind(name: str) -> str:
        text = name.startswith("crossattn_proj") or ".cross_attn.k_proj" in name or ".cross_attn.v_proj" in name
        return "text" if text else "video"

    return {"params": lora.adapter_parameter_count(net, cfg), "layers": len(layers),
            "block": [(kind(n), modules[n].in_features) for n in layers if n.startswith("blocks.0.")],
            "outside": [(kind(n), modules[n].in_features) for n in layers if not n.startswith("blocks.")]}


def lora_activation_bytes(adapted: list[tuple[str, int]], L: int, N: int, rank: int, e: int,
                          inputs_counted: bool = True) -> int:
    """What the adapters of `adapted` layers ((token kind, input width), see `lora_sizes`) keep for backward,
    per sample (see the module docstring). `inputs_counted`: the layers' inputs are kept anyway (a block's,
    in its formula), so only an fp32 copy of a non-fp32 input adds to them."""
    total = 0
    for kind, width in adapted:
        tokens = N if kind == "text" else L
        total += tokens * rank * 4 + (tokens * width * 4 if e != 4 or not inputs_counted else 0)
    return total


@functools.cache
def vae_params(flavor: str) -> int:
    import torch

    from cosmos_engine.models.flavors import vae_config
    from cosmos_engine.models.wan_vae import WanVAE

    with torch.device("meta"):
        return sum(p.numel() for p in WanVAE(vae_config(flavor)).parameters())


# Qwen2.5-VL-7B (Cosmos-Reason1-7B) language model, from its config.json: what TextEncoder keeps; loading
# briefly holds the whole checkpoint (vision tower and lm_head too) before they are dropped.
_REASON1 = {"hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944, "vocab_size": 152064,
            "num_attention_heads": 28, "num_key_value_heads": 4}
_REASON1_LOAD_EXTRA = 676_000_000 + 152064 * 3584  # vision tower + lm_head, loaded then dropped


def text_encoder_params(model_cfg) -> tuple[int, int, str]:
    """(language-model parameters, extra parameters held while loading, where the numbers come from)."""
    cfg, source = None, ""
    folder = Path(model_cfg.text_encoder_path) if model_cfg.text_encoder_path else None
    if folder is not None and (folder / "config.json").is_file():
        raw = json.loads((folder / "config.json").read_text())
        cfg, source = raw.get("text_config", raw), f"{folder / 'config.json'}"
    elif model_cfg.flavor == "tiny":
        return 0, 0, "the tiny random encoder (negligible)"
    else:
        cfg, source = _REASON1, "Qwen2.5-VL-7B's config (model.text_encoder_path not readable)"
    d, layers, inter, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    kv_dim = d // heads * kv
    per_layer = d * d * 2 + 2 * d * kv_dim + d + 2 * kv_dim + 3 * d * inter + 2 * d
    lm = vocab * d + layers * per_layer + d
    extra = _REASON1_LOAD_EXTRA if lm > 1e9 else 0
    return lm, extra, source


# ------------------------------------------------------------------------------------------ activations
def block_activation_bytes(cfg, L: int, N: int, e: int, mode: str) -> int:
    """Bytes one block keeps for backward, for one sample (see the module docstring)."""
    D, H, h = cfg.model_channels, int(cfg.model_channels * cfg.mlp_ratio), cfg.num_heads
    if mode == "none":
        return L * (18 * D * e + 2 * H * e + (5 * h + 6) * 4) + N * (3 * D * e + 4 * h)
    if mode == "full":
        return L * D * e
    if mode == "selective":
        return L * D * e + 2 * (L * D * e + 4 * L * h)
    raise ValueError(f"activation_checkpointing must be none, full or selective, got {mode!r}")


def shared_activation_bytes(cfg, L: int, N: int, e: int, mode: str, frozen: bool = False) -> int:
    """Bytes kept once per sample: RoPE table, patch-embedding input, text projection, final layer.
    `frozen` (a LoRA run): the frozen patch embedding, text projection and final linear keep no input for a
    weight gradient (an adapter on one of them keeps its own, see `lora_activation_bytes`)."""
    d, D = cfg.head_dim, cfg.model_channels
    patch = 0 if frozen else cfg.patch_in_channels * cfg.patch_spatial ** 2 * cfg.patch_temporal
    text_in = 0 if frozen else cfg.crossattn_proj_in_channels
    text = N * (text_in + 2 * cfg.crossattn_emb_channels) * e if cfg.use_crossattn_projection \
        else N * cfg.crossattn_emb_channels * e
    final = (1 if frozen else 2) * L * D * 4 if mode == "none" else L * D * e
    return 2 * L * d * 4 + L * patch * e + text + final


def backward_transient_bytes(cfg, L: int, e: int) -> int:
    D, H = cfg.model_channels, int(cfg.model_channels * cfg.mlp_ratio)
    return 2 * L * H * e + 2 * L * D * 4


def sampling_transient_bytes(cfg, L: int, N: int, e: int) -> int:
    """One block's working set without gradients, per sample: q, k, v, attention output, the residual, the
    normalised input, the [L, H] pair, the cross-attention k and v over the text."""
    D, H = cfg.model_channels, int(cfg.model_channels * cfg.mlp_ratio)
    return L * (7 * D + 2 * H) * e + 2 * N * D * e + 2 * L * cfg.head_dim * 4


def vae_activation_bytes(flavor: str, height: int, width: int, e: int, tiled: bool) -> int:
    from cosmos_engine.models.flavors import vae_config

    pixels = min(height * width, VAE_TILE_PIXELS) if tiled else height * width
    return VAE_ACTIVATION_BASE + VAE_ACTIVATION_PER_PIXEL_CHANNEL * vae_config(flavor).dim * pixels * e


# ---------------------------------------------------------------------------------------------- state
def state_bytes_per_param(precision: str, param_bytes: int) -> dict[str, int]:
    """Bytes per parameter of each part of the training state (before sharding)."""
    p = param_bytes if precision == "bf16" else 4
    return {"parameters": p, "gradients": p, "adamw_moments": 2 * p}


def shard_size(world_size: int) -> int:
    """FSDP2's shard dimension (parallel/parallelize.apply_fsdp): min(8, world size); 1 without FSDP."""
    return min(8, world_size)


# --------------------------------------------------------------------------------------------- on disk
def checkpoint_bytes(flavor: str, precision: str, param_bytes: int, ema: bool, lora: dict | None = None) -> int:
    """Bytes of one checkpoint folder's files (train/checkpoint.py PARTS): model/ (net.* in the training
    dtype, net_ema.* in fp32), optim/ (flattened: per parameter tensor the two AdamW moments in the
    parameter dtype, an fp32 step and 12 param-group values), scheduler/ and trainer/ (a few scalars), plus
    DCP's bytes per entry (its data-file framing and `.metadata`).
    A LoRA run (`lora` = `lora_sizes(...)`, `param_bytes` the frozen base's): net.* is the base plus the fp32
    adapters (two tensors per adapted layer), net_ema.* and the optimizer hold the adapters only, and the
    adapter config file sits beside the parts."""
    sizes = dit_sizes(flavor, param_bytes)
    if lora is None:
        p = param_bytes
        tensors = sizes["param_tensors"]
        model_entries = sizes["entries"] * (2 if ema else 1)
        model = sizes["state_bytes"] + (sizes["state_bytes_fp32"] if ema else 0) + model_entries * DCP_MODEL_BYTES_PER_ENTRY
        optim = sizes["params"] * 2 * p + tensors * 4 + tensors * OPTIM_ENTRIES_PER_TENSOR * DCP_OPTIM_BYTES_PER_ENTRY
        return model + optim + SCHEDULER_AND_TRAINER_BYTES
    tensors, adapters = 2 * lora["layers"], lora["params"] * 4
    model_entries = sizes["entries"] + tensors * (2 if ema else 1)
    model = sizes["state_bytes"] + adapters * (2 if ema else 1) + model_entries * DCP_MODEL_BYTES_PER_ENTRY
    optim = adapters * 2 + tensors * 4 + tensors * OPTIM_ENTRIES_PER_TENSOR * DCP_OPTIM_BYTES_PER_ENTRY
    return model + optim + SCHEDULER_AND_TRAINER_BYTES + LORA_CONFIG_BYTES


def latent_cache_bytes(frames: int, height: int, width: int, e: int, windows: int) -> int:
    t, h, w = latent_thw(frames, height, width)
    return windows * (16 * t * h * w * e + 1024)


def text_cache_bytes(cfg, text_tokens: int, e: int, prompts: int) -> int:
    return prompts * (text_tokens * cfg.text_in_channels * e + 1024)


def bytes_human(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    if n >= MIB:
        return f"{n / MIB:.0f} MiB"
    return f"{n / 1024:.0f} KiB" if n >= 1024 else f"{int(n)} B"
