"""LoRA on the DiT through PEFT: injection, the adapter's files, merging, and several adapters at once.

Targets. The official LoRA experiment adapts `q_proj, k_proj, v_proj, output_proj, mlp.layer1, mlp.layer2`;
our module names are the official ones, so the same names select the same layers (self- and cross-attention
projections and both MLP linears of every block, 10 per block). Names match PEFT's way (a layer whose path
is the name or ends with "." + name), checked by PEFT's own `check_target_module_exists`. Only linears the
forward calls as modules can carry an adapter: the AdaLN, timestep and final-layer linears run in the fp32
islands through their weights (`cosmos_dit.linear_in`), where an adapter would be silently skipped, so they
are refused.

Precision (official): the adapters are fp32 whatever the base dtype (PEFT upcasts bf16 adapters, and casts
each adapter's input to fp32); the result is cast back to the base layer's dtype. `lora_B` starts at zero, so
an injected net computes exactly what the base computes until the first step.

Key layouts, all with the official module names:
* injected (a PEFT-injected module tree, and the `net.*` keys of official LoRA checkpoints):
  `blocks.0.self_attn.q_proj.base_layer.weight`, `...q_proj.lora_A.default.weight`, `...lora_B.default.weight`;
* adapter (PEFT's saved form without the adapter name): `blocks.0.self_attn.q_proj.lora_A.weight`;
* PEFT folder: `adapter_config.json` + `adapter_model.safetensors` holding `base_model.model.` + adapter keys,
  what `PeftModel.save_pretrained` writes; `peft.PeftModel.from_pretrained(dit, folder)` reads it back.
Every adapter file goes through `adapter_keys_to_official`, the one place that normalises its key names.

Several adapters (`apply_adapters`) stay unmerged: each is a PEFT adapter of its own, all active at once,
so a layer computes W x + sum_i s_i (alpha_i / r_i) B_i A_i x (PEFT's multi-adapter forward; s_i the scale
given with the adapter). Merging (`merge_injected`) folds W + (alpha / r) B A into plain keys, in fp32.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from cosmos_engine.atomic import atomic_path
from cosmos_engine.config.schema import LoraConfig
from cosmos_engine.errors import CheckpointError, RecipeError
from cosmos_engine.models.cosmos_dit import CosmosDiT, DiTConfig
from cosmos_engine.models.diffusers_format import diffusers_module_roots, official_key

log = logging.getLogger(__name__)

ADAPTER_NAME = "default"          # PEFT's name of a single adapter (the official checkpoints use it)
BASE_LAYER = "base_layer"
CONFIG_FILE = "adapter_config.json"
ADAPTER_DIR = "lora_adapter"      # where `convert` writes a LoRA run's adapter, beside the three files
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_FILE_PREFIX = "base_model.model."
# Linears that the forward calls as modules (see the module docstring); an adapter anywhere else is refused.
ADAPTABLE = re.compile(r"blocks\.\d+\.(self_attn|cross_attn)\.(q_proj|k_proj|v_proj|output_proj)"
                       r"|blocks\.\d+\.mlp\.layer[12]|x_embedder\.proj\.1|crossattn_proj\.0")
_INJECTED = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.(?P<adapter>[^.]+)\.weight$")
_ADAPTER = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
# Names only diffusers' Cosmos transformer has (its rename table maps them to ours).
_DIFFUSERS = re.compile(r"^(transformer\.)?(" + "|".join(re.escape(path) for path in diffusers_module_roots()) + r")\.")
_SHOWN = 5


# ----------------------------------------------------------------------------------------------------------------------
# Injection
# ----------------------------------------------------------------------------------------------------------------------


def peft_config(cfg: LoraConfig):
    """The PEFT `LoraConfig` of a [lora] table (the official `add_lora` arguments: kaiming A, zero B)."""
    import peft

    return peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=list(cfg.target_modules), init_lora_weights=True)


def target_layers(net: nn.Module, cfg: LoraConfig) -> list[str]:
    """The module names the [lora] table adapts in `net`; RecipeError naming lora.target_modules or lora.rank
    for a name that selects no layer, a layer that cannot carry an adapter, or a rank above a layer's size."""
    from peft.tuners.tuners_utils import check_target_module_exists

    linears = {name: m for name, m in net.named_modules() if isinstance(m, nn.Linear)}
    adaptable = sorted({_short_name(name) for name in linears if ADAPTABLE.fullmatch(name)})
    chosen: list[str] = []
    for target in cfg.target_modules:
        single = peft_config(LoraConfig(target_modules=(target,)))
        hits = [name for name, _ in net.named_modules() if check_target_module_exists(single, name)]
        if not hits:
            raise RecipeError(f"lora.target_modules: {target!r} names no layer of the DiT; adaptable layers: "
                              f"{', '.join(adaptable)}")
        refused = [name for name in hits if name not in linears or not ADAPTABLE.fullmatch(name)]
        if refused:
            raise RecipeError(f"lora.target_modules: {target!r} selects {refused[0]}, which cannot carry an adapter "
                              "(not a linear the forward calls as a module: the AdaLN, timestep and final-layer "
                              f"linears run in fp32 islands); adaptable layers: {', '.join(adaptable)}")
        chosen += [name for name in hits if name not in chosen]
    for name in chosen:
        layer = linears[name]
        if cfg.rank > min(layer.in_features, layer.out_features):
            raise RecipeError(f"lora.rank = {cfg.rank} is invalid: larger than the layer {name} "
                              f"({layer.out_features} x {layer.in_features}); expected at most "
                              f"{min(layer.in_features, layer.out_features)}")
    return chosen


def check_targets(config: DiTConfig, cfg: LoraConfig) -> list[str]:
    """`target_layers` of the DiT `config` describes, built on the meta device (no memory, no weights): the
    [lora] table's errors before any expensive set-up."""
    with torch.device("meta"):
        return target_layers(CosmosDiT(config), cfg)


def _short_name(module: str) -> str:
    """'blocks.3.mlp.layer1' -> 'mlp.layer1', 'blocks.0.cross_attn.q_proj' -> 'q_proj' (what a recipe writes)."""
    parts = module.split(".")
    return ".".join(parts[-2:]) if parts[-2] == "mlp" else parts[-1] if parts[0] == "blocks" else module


def inject_lora(net: nn.Module, cfg: LoraConfig, adapter_name: str = ADAPTER_NAME) -> nn.Module:
    """Inject the [lora] table's adapters into `net` in place (PEFT) and freeze everything else; returns `net`.

    Works on the meta device too (the adapters are then empty, to be loaded or initialised after `to_empty`).
    Inject before activation checkpointing and FSDP, so module names are the official ones."""
    layers = target_layers(net, cfg)
    _inject(peft_config(cfg), net, adapter_name)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    log.info("LoRA rank %d alpha %g on %d layers: %s trainable parameters of %s (%.3f %%)", cfg.rank, cfg.alpha,
             len(layers), f"{trainable:,}", f"{total:,}", 100.0 * trainable / max(total, 1))
    return net


def _inject(config, net: nn.Module, adapter_name: str, state: Mapping[str, torch.Tensor] | None = None) -> None:
    """PEFT's injection, then its fp32 upcast of the adapters (which only PeftModel applies by itself)."""
    import peft
    from peft.tuners.tuners_utils import cast_adapter_dtype

    with warnings.catch_warnings():  # a second adapter on the same net is intended (see apply_adapters)
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute in the model")
        peft.inject_adapter_in_model(config, net, adapter_name=adapter_name, state_dict=state)
    cast_adapter_dtype(net, adapter_name=adapter_name, autocast_adapter_dtype=True)


def adapter_parameter_count(net: nn.Module, cfg: LoraConfig) -> int:
    """Parameters the [lora] table adds to `net` (which is left untouched): r (in + out) per adapted layer."""
    layers = dict(net.named_modules())
    return sum(cfg.rank * (layers[name].in_features + layers[name].out_features) for name in target_layers(net, cfg))


# ----------------------------------------------------------------------------------------------------------------------
# Key layouts
# ----------------------------------------------------------------------------------------------------------------------


def is_adapter_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def is_injected(keys: Sequence[str]) -> bool:
    """Whether state-dict keys are in the PEFT-injected layout (official LoRA checkpoints, our LoRA runs)."""
    return any(f".{BASE_LAYER}." in key or is_adapter_key(key) for key in keys)


def adapter_state(state: Mapping[str, torch.Tensor], adapter_name: str = ADAPTER_NAME) -> dict[str, torch.Tensor]:
    """The adapter entries of an injected state dict, in the adapter layout (the adapter name removed)."""
    out = {}
    for key, value in state.items():
        match = _INJECTED.match(key)
        if match and match["adapter"] == adapter_name:
            out[f"{match['module']}.lora_{match['part']}.weight"] = value
    return out


def adapter_keys_to_official(state: Mapping[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """An adapter file's entries keyed in the adapter layout with official module names.

    Accepts PEFT's saved keys (`base_model.model.` prefix, or none) of adapters on our DiT or the official one,
    and adapters with diffusers' key names (as the diffusers Cosmos recipe saves them, with or without a
    `transformer.` prefix), renamed through the one official <-> diffusers table (models/diffusers_format.py)."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix(PEFT_FILE_PREFIX)
        if _DIFFUSERS.match(name) or name.startswith("transformer."):
            try:
                name = official_key(name.removeprefix("transformer."))
            except CheckpointError as exc:
                raise CheckpointError(f"{source}: {exc}") from None
        name = name.removeprefix("net.")
        match = _INJECTED.match(name)
        if match and not _ADAPTER.match(name):  # a saved key that kept its adapter name
            name = f"{match['module']}.lora_{match['part']}.weight"
        out[name] = value
    return out


def _adapter_modules(state: Mapping[str, torch.Tensor], source: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (A [r, in], B [out, r]) of an adapter-layout state dict; CheckpointError for a broken pair."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    stray = []
    for key, value in state.items():
        match = _ADAPTER.match(key)
        if match is None:
            stray.append(key)
            continue
        parts.setdefault(match["module"], {})[match["part"]] = value
    if stray:
        raise CheckpointError(f"{source}: {len(stray)} entries are not LoRA weights (expected '<layer>.lora_A.weight' "
                              f"and '<layer>.lora_B.weight'): {', '.join(stray[:_SHOWN])}")
    if not parts:
        raise CheckpointError(f"{source}: no LoRA weights found")
    pairs = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{source}: layer {module} has lora_{'A' if 'A' in ab else 'B'} but no "
                                  f"lora_{'B' if 'A' in ab else 'A'}")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{source}: layer {module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do "
                                  "not make a low-rank pair (expected [r, in] and [out, r])")
        pairs[module] = (a, b)
    return pairs


def delta_weight(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * B A in fp32 (float64 stays float64): what an adapter adds to its layer's weight."""
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    return scale * (b.to(dtype) @ a.to(dtype))


def merge_injected(state: Mapping[str, torch.Tensor], cfg: LoraConfig, source: str | Path) -> dict[str, torch.Tensor]:
    """An injected state dict (base + one adapter) merged into plain keys: W + (alpha / r) B A computed in fp32
    and stored in W's dtype. `cfg` gives alpha, and the rank the file must have (a LoRA checkpoint does not
    record alpha, so it comes from the recipe, as the official inference takes it from the experiment)."""
    names = {m["adapter"] for m in map(_INJECTED.match, state) if m}
    if len(names) > 1:
        raise CheckpointError(f"{source}: holds {len(names)} LoRA adapters ({', '.join(sorted(names))}); expected one")
    lora = adapter_state(state, names.pop() if names else ADAPTER_NAME)
    pairs = _adapter_modules(lora, source) if lora else {}
    merged = {}
    for key, value in state.items():
        if _INJECTED.match(key):
            continue
        plain = key.replace(f".{BASE_LAYER}.", ".")
        module = plain.rsplit(".", 1)[0]
        if module in pairs and plain.endswith(".weight"):
            a, b = pairs[module]
            if a.shape[0] != cfg.rank:
                raise CheckpointError(f"{source}: its LoRA adapters have rank {a.shape[0]}, but lora.rank = "
                                      f"{cfg.rank}; set lora.rank and lora.alpha to the values it was trained with")
            if tuple(b.shape[:1] + a.shape[1:]) != tuple(value.shape):
                raise CheckpointError(f"{source}: layer {module}: adapter {list(b.shape[:1] + a.shape[1:])} does not "
                                      f"fit the weight {list(value.shape)}")
            value = (value.to(delta_weight(a, b, 1.0).dtype) + delta_weight(a, b, cfg.alpha / cfg.rank)).to(value.dtype)
        merged[plain] = value
    missing = sorted(set(pairs) - {k.rsplit(".", 1)[0] for k in merged})
    if missing:
        raise CheckpointError(f"{source}: LoRA adapters for layers without a base weight: {', '.join(missing[:_SHOWN])}")
    return merged


# ----------------------------------------------------------------------------------------------------------------------
# PEFT folders
# ----------------------------------------------------------------------------------------------------------------------


def write_adapter(folder: str | Path, config_json: str, state: Mapping[str, torch.Tensor]) -> Path:
    """Write a PEFT folder: `config_json` (a PEFT adapter_config.json text) and the adapter-layout `state` as
    `adapter_model.safetensors` (keys prefixed `base_model.model.`, as PeftModel saves them); each file
    atomically. Returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {PEFT_FILE_PREFIX + key: value.detach().contiguous() for key, value in state.items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(config_json)
    log.info("wrote the LoRA adapter %s (%d tensors)", folder, len(tensors))
    return folder


def config_json(cfg: LoraConfig) -> str:
    """adapter_config.json of a [lora] table, as PEFT writes it (sets as lists)."""
    raw = peft_config(cfg).to_dict()
    return json.dumps({k: sorted(v) if isinstance(v, set) else v for k, v in raw.items()}, indent=2, sort_keys=True) + "\n"


def read_config(path: str | Path) -> tuple[str, LoraConfig]:
    """(text, the [lora] values) of an adapter_config.json; CheckpointError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
        raw = json.loads(text)
        cfg = LoraConfig(enabled=True, rank=int(raw["r"]), alpha=float(raw["lora_alpha"]),
                         dropout=float(raw.get("lora_dropout") or 0.0),
                         target_modules=tuple(raw.get("target_modules") or ()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (a LoRA adapter config, PEFT's {CONFIG_FILE})") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable PEFT adapter config ({exc!r})") from None
    return text, cfg


def recorded_config(checkpoint: str | Path) -> Path | None:
    """The adapter config recorded beside a LoRA checkpoint, or None: a run's `iter_XXXXXXXXX/adapter_config.json`
    (beside its `model/` folder and the files `convert` writes there) or a converted `lora_adapter/`'s."""
    path = Path(checkpoint)
    folder = path.parent if path.is_file() or path.name == "model" else path
    for candidate in (folder / CONFIG_FILE, folder / ADAPTER_DIR / CONFIG_FILE):
        if candidate.is_file():
            return candidate
    return None


def read_adapter(path: str | Path):
    """(PEFT LoraConfig, adapter-layout tensors on the CPU) of a PEFT folder; CheckpointError naming the file."""
    import peft
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path).expanduser()
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such LoRA adapter folder (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise CheckpointError(f"{needed}: missing; a LoRA adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                                  "(the PEFT format; .bin adapters are pickles and are not read)")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        found = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{config_path}: peft_type {found!r}; expected a LoRA adapter ('LORA')")
    try:
        config = peft.LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: not a valid PEFT LoRA config ({exc})") from None
    if getattr(config, "use_dora", False) or getattr(config, "use_rslora", False):
        raise CheckpointError(f"{config_path}: DoRA / rsLoRA adapters are not supported (plain LoRA only)")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    return config, adapter_keys_to_official(tensors, weights_path)


def apply_adapters(net: nn.Module, adapters: Sequence[tuple[str | Path, float]]) -> nn.Module:
    """Apply PEFT folders `(path, scale)` to `net` in place, unmerged and all active (see the module docstring).

    Each adapter must fit `net`: every layer it names is an adaptable layer of this DiT and its matrices have
    that layer's sizes; CheckpointError naming the folder and the first layers that do not fit (an adapter
    trained for another network or another size). Returns `net`, adapters frozen."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import set_peft_model_state_dict

    names = []
    for index, (path, scale) in enumerate(adapters):
        config, state = read_adapter(path)
        pairs = _adapter_modules(state, path)
        _check_fits(net, pairs, path)
        name = f"adapter{index}"
        _inject(config, net, name, state)  # exactly where the file has weights, whatever its target_modules say
        result = set_peft_model_state_dict(net, state, adapter_name=name)
        unexpected = [k for k in result.unexpected_keys if is_adapter_key(k)]
        if unexpected:
            raise CheckpointError(f"{path}: {len(unexpected)} adapter weights did not load: {', '.join(unexpected[:_SHOWN])}")
        for module in net.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_scale(name, scale)
        names.append(name)
        rank = next(iter(pairs.values()))[0].shape[0]
        log.info("LoRA adapter %s: %d layers, rank %d, alpha %g, scale %g (unmerged)", path, len(pairs), rank,
                 config.lora_alpha, scale)
    for module in net.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter([n for n in names if n in module.lora_A])
    return net.requires_grad_(False)


def _check_fits(net: nn.Module, pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]], source: str | Path) -> None:
    modules = dict(net.named_modules())
    unknown, misshaped = [], []
    for module, (a, b) in pairs.items():
        layer = modules.get(module)
        base = getattr(layer, BASE_LAYER, layer)
        if not isinstance(base, nn.Linear) or not ADAPTABLE.fullmatch(module):
            unknown.append(module)
        elif (a.shape[1], b.shape[0]) != (base.in_features, base.out_features):
            misshaped.append(f"{module} (adapter {b.shape[0]} x {a.shape[1]}, layer {base.out_features} x "
                             f"{base.in_features})")
    problems = []
    for what, items in (("unknown layers", unknown), ("mis-shaped layers", misshaped)):
        if items:
            more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            problems.append(f"{len(items)} {what}: {', '.join(items[:_SHOWN])}{more}")
    if problems:
        raise CheckpointError(f"{source}: the LoRA adapter does not fit this DiT (another architecture or size?): "
                              + "; ".join(problems))
