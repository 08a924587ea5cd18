"""Read official DiT weights and build a `CosmosDiT` from them.

Four layouts are read; the first three have the official key names, each also in the PEFT-injected form
of a LoRA run (`...q_proj.base_layer.weight`, `...q_proj.lora_A.default.weight`; official LoRA checkpoints and
ours), which `build_dit` merges into plain weights (models/lora.py):
* an official `.pt` (a released checkpoint, or `model.pt` from the converter): flat `net.*` keys, and in
  `model.pt` also `net_ema.*`;
* a converted EMA file (`model_ema_fp32.pt`, `model_ema_bf16.pt`): the EMA weights under `net.*`;
* a DCP checkpoint folder (`.../iter_000001000/model/` with its `.metadata`, or the `iter_*` folder above
  it): `net.*` (the training weights, bf16) and `net_ema.*` (the EMA, fp32). It is read with
  torch.distributed.checkpoint in a single process; no process group is needed;
* a diffusers transformer folder (`config.json` + `diffusion_pytorch_model*.safetensors`, or a pipeline
  folder holding it as `transformer/`): diffusers key names, renamed by `diffusers_format`, and its
  `config.json` checked against the DiTConfig. It holds one set of weights, whatever `weights` asks for.

Which weights: `weights="ema"` (the default, for sampling) takes `net_ema.*` when the file has them and
`net.*` otherwise: released `.pt` files and the converted EMA files keep the EMA weights under `net.`, and
the official inference loads those. `weights="net"` takes the training weights `net.*`: what post-training
starts from, as the official trainer loads a checkpoint by prefix (for a released file these are the EMA
weights anyway). A state dict without any `net.`/`net_ema.` prefix (one saved from
`CosmosDiT.state_dict()`) is taken as it is. TransformerEngine `_extra_state` entries are dropped.

Nothing is unpickled beyond plain checkpoint data unless the caller passes `trust_checkpoint=True` (the
CLI's --trust-checkpoint): `.pt` files are read with `weights_only=True`, and a DCP folder's `.metadata`
(a pickle) and its entries through `cosmos_engine.dcp_io`, which builds only plain checkpoint data.

Memory: the model is built on the meta device and receives the loaded tensors directly: `.pt` files are
memory-mapped and assigned (converted tensor by tensor when the dtype differs), safetensors are read one
tensor at a time and assigned the same way, DCP reads straight into the materialized parameters. The 2B
model never exists twice in host memory while loading.

Integrity: a `.pt` file with a `<file>.sha256` sidecar (`cosmos-engine convert` writes one) is hashed and
compared before it is read (`cosmos_engine.checksum`); `check_finite` refuses weights holding NaN or Inf.
"""

from __future__ import annotations

import itertools
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from cosmos_engine.checksum import verify_sha256
from cosmos_engine.config.schema import LoraConfig
from cosmos_engine.dcp_io import METADATA_FILE, load_dcp, read_metadata
from cosmos_engine.errors import CheckpointError
from cosmos_engine.models import diffusers_format
from cosmos_engine.models import lora as lora_lib
from cosmos_engine.models.cosmos_dit import CosmosDiT, DiTConfig

log = logging.getLogger(__name__)

Weights = Literal["ema", "net"]
NET_PREFIX = "net."
EMA_PREFIX = "net_ema."
EXTRA_STATE = "_extra_state"
_SHOWN = 5  # keys listed per kind of mismatch in an error message


def strip_official_prefix(sd: Mapping[str, torch.Tensor], prefix: str = NET_PREFIX) -> dict[str, torch.Tensor]:
    """The entries of `sd` under `prefix`, with the prefix removed and `_extra_state` entries dropped.

    `prefix=""` keeps every key (still dropping `_extra_state`)."""
    return {key[len(prefix):]: value for key, value in sd.items()
            if key.startswith(prefix) and not key.endswith(EXTRA_STATE)}


def choose_prefix(keys: list[str], weights: Weights, source: str | Path) -> str:
    """The key prefix holding the requested weights in a file with these keys (see the module docstring)."""
    if weights not in ("ema", "net"):
        raise ValueError(f"weights must be 'ema' or 'net', got {weights!r}")
    has_ema = any(k.startswith(EMA_PREFIX) for k in keys)
    has_net = any(k.startswith(NET_PREFIX) for k in keys)
    if weights == "ema" and has_ema:
        return EMA_PREFIX
    if has_net:
        return NET_PREFIX
    if has_ema:
        raise CheckpointError(f"{source}: holds only EMA weights ('{EMA_PREFIX}*'), but the training weights "
                              f"('{NET_PREFIX}*') were asked for; use weights='ema'")
    return ""


def check_keys(expected: Mapping[str, torch.Size], found: Mapping[str, torch.Size], source: str) -> None:
    """Raise CheckpointError naming the first few missing, unexpected and mis-shaped keys, with their counts."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [f"{k} (file {list(found[k])}, model {list(expected[k])})"
                 for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not fit the DiT ({len(expected)} keys expected): " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------------


def dcp_folder(path: str | Path) -> Path | None:
    """The DCP folder (with `.metadata`) at `path` or at `path/model`, or None when `path` is not one."""
    path = Path(path)
    for folder in (path, path / "model"):
        if (folder / METADATA_FILE).is_file():
            return folder
    return None


def _dcp_tensor_shapes(folder: Path, trust_checkpoint: bool) -> dict[str, TensorStorageMetadata]:
    metadata = read_metadata(folder, trust_checkpoint)
    return {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def _load_pt(path: Path, trust_checkpoint: bool) -> dict[str, torch.Tensor]:
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder without a DCP '.metadata' file (nor a 'model/' folder with one), "
                              "nor a diffusers transformer folder (config.json + diffusion_pytorch_model*.safetensors)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    verify_sha256(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint, mmap=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: torch.load(weights_only=True) refused the file ({first}); if you trust "
                              "its origin, pass --trust-checkpoint (trust_checkpoint=True)") from e
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found a {type(sd).__name__}")
    return dict(sd)


def _read_pt(path: Path, weights: Weights, trust_checkpoint: bool) -> tuple[str, dict[str, torch.Tensor]]:
    """(prefix taken, network-relative tensors) of a `.pt` file; non-tensor entries other than `_extra_state` are an error."""
    raw = _load_pt(path, trust_checkpoint)
    prefix = choose_prefix(list(raw), weights, path)
    sd = strip_official_prefix(raw, prefix)
    not_tensors = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: {len(not_tensors)} entries are not tensors: {', '.join(not_tensors[:_SHOWN])}")
    return prefix, sd


def _dcp_entries(shapes: Mapping[str, TensorStorageMetadata], weights: Weights, folder: Path) -> tuple[str, dict[str, str]]:
    """(prefix taken, network key -> DCP key) of the requested weights in a DCP model folder.

    A LoRA run's `net_ema.*` holds the averaged adapters only (train/ema.py): its EMA net is `net.*`'s frozen
    base with those adapters."""
    prefix = choose_prefix(list(shapes), weights, folder)
    chosen = {k[len(prefix):]: k for k in shapes if k.startswith(prefix) and not k.endswith(EXTRA_STATE)}
    if prefix == EMA_PREFIX and all(lora_lib.is_adapter_key(k) for k in chosen):
        base = {k[len(NET_PREFIX):]: k for k in shapes if k.startswith(NET_PREFIX) and not lora_lib.is_adapter_key(k)
                and not k.endswith(EXTRA_STATE)}
        chosen = {**base, **chosen}
    return prefix, chosen


def read_state_dict(path: str | Path, *, weights: Weights = "ema", trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The DiT state dict (network-relative keys, the file's dtypes, on the CPU) from a `.pt` or a DCP folder.

    DCP tensors are read into fresh memory; `.pt` tensors stay memory-mapped. A LoRA checkpoint's keys stay
    in the PEFT-injected layout (`build_dit` merges them)."""
    folder = dcp_folder(path)
    if folder is None:
        return _read_pt(Path(path), weights, trust_checkpoint)[1]
    shapes = _dcp_tensor_shapes(folder, trust_checkpoint)
    _, chosen = _dcp_entries(shapes, weights, folder)
    state = {key: torch.empty(shapes[key].size, dtype=shapes[key].properties.dtype) for key in chosen.values()}
    load_dcp(state, folder, trust_checkpoint=trust_checkpoint)
    return {name: state[key] for name, key in chosen.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------------------


def build_dit(config: DiTConfig, checkpoint: str | Path | None = None, *, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, weights: Weights = "ema", trust_checkpoint: bool = False,
              lora: LoraConfig | None = None) -> CosmosDiT:
    """A CosmosDiT on `device` with `dtype` parameters, loaded from `checkpoint` (or randomly initialised).

    Floating-point tensors of the file are converted to `dtype` (so a bf16 net rounds the RoPE exponent
    buffers, as the official `net.to(bfloat16)` does); the int64 `accum_*` buffers stay int64. A diffusers
    folder lacks those buffers: they are rebuilt (`diffusers_format.rebuilt_buffers`).
    A LoRA checkpoint (PEFT-injected keys: an official LoRA run's files, ours) is merged into plain weights,
    W + (alpha / r) B A in fp32. The file does not record alpha: it and the rank the file must have come from
    the adapter config recorded beside it (`lora.recorded_config`: our runs and conversions have one), else
    from `lora` (a [lora] table; default the official values, which official LoRA checkpoints need)."""
    with torch.device("meta"):
        model = CosmosDiT(config)
    model.to(dtype=dtype)
    if checkpoint is None:
        model.to_empty(device=device)
        model.init_weights()
        return model
    expected = {k: v.shape for k, v in model.state_dict().items()}
    folder = dcp_folder(checkpoint)
    hub = diffusers_format.diffusers_folder(checkpoint) if folder is None else None
    if hub is not None:
        diffusers_format.check_config(diffusers_format.read_config(hub), config, hub / diffusers_format.CONFIG_FILE)
        stored = {k: v for k, v in expected.items() if not diffusers_format.is_dropped(k)}
        check_keys(stored, diffusers_format.tensor_shapes(hub), f"diffusers folder {hub}")
        targets = model.state_dict()
        sd = {k: v.to(device=device, dtype=targets[k].dtype) for k, v in diffusers_format.iter_tensors(hub)}
        model.load_state_dict({**sd, **diffusers_format.rebuilt_buffers(model, device)}, assign=True)
        log.info("loaded DiT weights (diffusers names) from %s (%s, %s)", checkpoint, dtype, device)
        return model
    if folder is not None:
        shapes = _dcp_tensor_shapes(folder, trust_checkpoint)
        prefix, chosen = _dcp_entries(shapes, weights, folder)
        source = f"DCP checkpoint {folder} ('{prefix}*')"
        if not lora_lib.is_injected(list(chosen)):
            check_keys(expected, {name: shapes[key].size for name, key in chosen.items()}, source)
            model.to_empty(device=device)
            params = model.state_dict()
            load_dcp({key: params[name] for name, key in chosen.items()}, folder, trust_checkpoint=trust_checkpoint)
            log.info("loaded DiT weights '%s*' from %s (%s, %s)", prefix, checkpoint, dtype, device)
            return model
        sd = read_state_dict(folder, weights=weights, trust_checkpoint=trust_checkpoint)
    else:
        prefix, sd = _read_pt(Path(checkpoint), weights, trust_checkpoint)
        source = f"checkpoint {checkpoint} ('{prefix}*')"
    if lora_lib.is_injected(list(sd)):
        recorded = lora_lib.recorded_config(checkpoint)
        if recorded is not None:  # what the run trained with beats any recipe's guess
            _, lora = lora_lib.read_config(recorded)
        lora = lora if lora is not None else LoraConfig()
        sd = lora_lib.merge_injected(sd, lora, source)
        log.info("merged the LoRA adapters of %s (rank %d, alpha %g, from %s)", source, lora.rank, lora.alpha,
                 recorded or "[lora]")
    check_keys(expected, {k: v.shape for k, v in sd.items()}, source)
    targets = model.state_dict()
    model.load_state_dict({k: v.to(device=device, dtype=targets[k].dtype) for k, v in sd.items()}, assign=True)
    log.info("loaded DiT weights '%s*' from %s (%s, %s)", prefix, checkpoint, dtype, device)
    return model


def check_finite(model: torch.nn.Module, source: str | Path) -> None:
    """CheckpointError naming `source` and the first parameter or floating buffer holding NaN or Inf (such
    weights sample an all-black video and nothing else says so). One isfinite reduction per tensor."""
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = tensor.numel() - int(torch.isfinite(tensor).sum())
            raise CheckpointError(f"{source}: DiT tensor '{name}' holds {bad} non-finite values (NaN/Inf) of "
                                  f"{tensor.numel()}; the checkpoint is damaged or its training diverged")
