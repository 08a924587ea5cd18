"""`cosmos-engine convert`: a training checkpoint (DCP folder) -> the three official inference files.

What the official `scripts/convert_distcp_to_pt.py` writes (reference/vae_data_io.md §4.7), key for key:
* `model.pt`: every key of the DCP `model/` folder as saved: `net.*` (the trained weights, bf16 in the
  official trainer) and `net_ema.*` (the fp32 EMA copy), full tensors, in the order of the DCP metadata;
* `model_ema_fp32.pt`: only the `net_ema.*` entries, renamed `net.*`, dtypes unchanged (the inference
  loader reads `net.*`, and the EMA weights are the ones to sample with);
* `model_ema_bf16.pt`: the same with every float32 tensor cast to bfloat16 (int64 buffers untouched): the
  file the official inference recommends.

A LoRA run (its checkpoint has PEFT-injected keys and an `adapter_config.json`): the three files in the
official LoRA run's layout (PEFT-injected keys, `net_ema.*` the whole EMA net), plus `lora_adapter/`, the
EMA adapter as a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`) to apply to the base with
`infer --lora`; `--merge-lora` writes the three files with the adapters merged, plain official keys.

Where the files go: by default beside the checkpoint, i.e. in the `iter_XXXXXXXXX/` folder next to its
`model/` subfolder, which is where the official documentation puts them (`convert_distcp_to_pt.py
$CHECKPOINT_DIR/model $CHECKPOINT_DIR`). A checkpoint may be named by its `iter_XXXXXXXXX/` folder, its
`model/` folder, or a run folder / `checkpoints/` folder, whose `latest_checkpoint.txt` picks the latest one,
or by a recipe (`RECIPE.toml`): the newest complete checkpoint of the run it trains under the active output
root. An [infer] `checkpoint_path = "run:RECIPE.toml"` names that checkpoint's converted `model_ema_fp32.pt`.

`convert --to diffusers` writes instead a diffusers transformer folder (`CosmosTransformer3DModel`:
`config.json` + `diffusion_pytorch_model*.safetensors`, `models/diffusers_format`), by default
`iter_XXXXXXXXX/transformer/`, from the EMA weights (like the two `model_ema_*` files) or, with `ema=False`,
the training weights; it also takes an official `.pt` file (a released checkpoint). The flavor is the one
whose tensor shapes the checkpoint has.

Differences from the official script, all deliberate: the DCP folder is read in this one process with no
process group; each file is written under a temporary name in its folder and renamed, so an existing file
is replaced only by a complete one (the official deletes the old files first); a folder that is not a DiT
model checkpoint is refused before anything is written; each file gets a `<file>.sha256` sidecar
(`cosmos_engine.checksum`) that every reader of the file verifies. Convert itself reads DCP folders, which
have none (and, for diffusers, `.pt` files, whose sidecar it verifies). The safetensors files of a diffusers
folder get none: the folder is diffusers' layout, and a safetensors reader refuses a truncated file. And, as
every checkpoint read in cosmos-engine, nothing is unpickled beyond plain checkpoint data unless the caller
trusts the checkpoint: the DCP `.metadata` file is a pickle, read here with an unpickler that only builds
DCP's own metadata classes, and non-tensor entries are loaded with `weights_only=True`
(`trust_checkpoint=True` restores torch's loaders).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from cosmos_engine.atomic import atomic_path, remove_stale_temporaries, unwritable_reason
from cosmos_engine.checkpoint_folders import LATEST, is_iteration_name, latest_checkpoint
from cosmos_engine.checksum import file_sha256, sidecar_path, write_sidecar
from cosmos_engine.config import load_recipe
from cosmos_engine.config.paths import run_dir_for
from cosmos_engine.config.schema import LoraConfig
from cosmos_engine.dcp_io import METADATA_FILE, load_dcp, read_metadata
from cosmos_engine.errors import CheckpointError
from cosmos_engine.models import diffusers_format, lora
from cosmos_engine.models.cosmos_dit import CosmosDiT, DiTConfig
from cosmos_engine.models.flavors import FLAVORS, dit_config
from cosmos_engine.models.state_dict import check_keys, read_state_dict

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
EMA_FP32_FILE = "model_ema_fp32.pt"
EMA_BF16_FILE = "model_ema_bf16.pt"
ADAPTER_DIR = lora.ADAPTER_DIR  # a LoRA run's adapter, a PEFT folder
NET_PREFIX = "net."
EMA_PREFIX = "net_ema."
RUN_PREFIX = "run:"  # checkpoint_path = "run:RECIPE.toml"


def find_model_dir(checkpoint: str | os.PathLike, trust_checkpoint: bool = False) -> Path:
    """The DCP `model/` folder that `checkpoint` names.

    `checkpoint` may be that folder itself, an `iter_XXXXXXXXX/` folder holding it, a `checkpoints/` folder
    or a run folder (holding `checkpoints/`); the last two resolve through `latest_checkpoint.txt`, which
    the trainer writes only after a checkpoint is complete. A `.toml` recipe names `run_checkpoint(recipe)`.
    """
    path = Path(checkpoint)
    if path.suffix == ".toml":
        path = run_checkpoint(path, trust_checkpoint)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder; expected a DCP checkpoint folder (iter_XXXXXXXXX/ or its model/)")
    for folder in (path, path / "checkpoints"):
        if (folder / LATEST).is_file():
            path = _latest_iteration(folder / LATEST)
            break
    if (path / METADATA_FILE).is_file():
        return path
    if (path / "model" / METADATA_FILE).is_file():
        return path / "model"
    if (path / "model").is_dir():
        raise CheckpointError(f"{path / 'model'}: no {METADATA_FILE} file; the checkpoint save did not finish, "
                              "or this is not a torch.distributed.checkpoint folder")
    raise CheckpointError(f"{path}: not a DCP checkpoint; expected {path / 'model' / METADATA_FILE} (an "
                          f"iter_XXXXXXXXX folder), {path / METADATA_FILE} (its model/ folder) or {LATEST} "
                          "(a run or checkpoints folder)")


def _latest_iteration(latest_file: Path) -> Path:
    expected = "expected one line naming a checkpoint folder such as iter_000000200"
    try:
        name = latest_file.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{latest_file}: not UTF-8 text (byte {exc.start}); {expected}") from None
    except OSError as exc:
        raise CheckpointError(f"{latest_file}: cannot read it ({exc.strerror}); {expected}") from None
    if not is_iteration_name(name):
        shown = repr(name) if len(name) <= 40 else repr(name[:40]) + "..."
        raise CheckpointError(f"{latest_file}: {expected}, got {shown if name else 'an empty file'}")
    folder = latest_file.parent / name
    if not folder.is_dir():
        raise CheckpointError(f"{latest_file}: names {name!r}, but {folder} does not exist")
    return folder


def load_model_checkpoint(model_dir: str | os.PathLike, *, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Every entry of the DCP `model/` folder, as full CPU tensors keyed as saved, in metadata order.

    Reads in this process without a process group. Raises CheckpointError, naming the folder, when a key
    is neither `net.*` nor `net_ema.*` (e.g. an optimizer folder was given), before reading any data.
    """
    model_dir = Path(model_dir)
    entries = read_metadata(model_dir, trust_checkpoint).state_dict_metadata
    wrong = [key for key in entries if not key.startswith((NET_PREFIX, EMA_PREFIX))]
    if not entries or wrong:
        shown = ", ".join(repr(key) for key in wrong[:3]) + (", ..." if len(wrong) > 3 else "")
        found = f"found {len(wrong)} others: {shown}" if wrong else "found no keys"
        raise CheckpointError(f"{model_dir}: not a DiT model checkpoint; every key must start with "
                              f"'{NET_PREFIX}' or '{EMA_PREFIX}', {found}")

    # Tensors are allocated from the metadata and filled in place; other entries (pickled objects, e.g.
    # TransformerEngine `_extra_state`) are placeholders that the loader replaces. No flattening: the keys
    # are flat already, and flattening would make the loader fill a new dict instead of this one.
    state = {key: torch.empty(entry.size, dtype=entry.properties.dtype) if isinstance(entry, TensorStorageMetadata)
             else None for key, entry in entries.items()}
    load_dcp(state, model_dir, trust_checkpoint=trust_checkpoint, flatten=False)
    return state


def ema_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """`net_ema.*` entries renamed `net.*` (the tensors themselves, not copies), as `model_ema_fp32.pt`."""
    return {NET_PREFIX + key[len(EMA_PREFIX):]: value for key, value in state.items() if key.startswith(EMA_PREFIX)}


def to_bf16(state: dict[str, Any]) -> dict[str, Any]:
    """Every float32 tensor cast to bfloat16, everything else as it is, as `model_ema_bf16.pt`."""
    return {key: value.to(torch.bfloat16) if isinstance(value, torch.Tensor) and value.dtype == torch.float32 else value
            for key, value in state.items()}


def convert_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                       ema: bool = True, merge_lora: bool = False, trust_checkpoint: bool = False) -> list[Path]:
    """Write `model.pt`, `model_ema_fp32.pt` and `model_ema_bf16.pt` for a DCP checkpoint, and for a LoRA run
    its adapter as a PEFT folder `lora_adapter/` (see `_lora_states`).

    Args:
        checkpoint: the checkpoint (see `find_model_dir` for the folders accepted).
        out_dir: where the files go; default the folder holding `model/` (the `iter_XXXXXXXXX` folder).
        ema: also write the two EMA files (a checkpoint without `net_ema.*` keys is then an error, as in
            the official converter); False writes `model.pt` only and removes EMA files a previous
            conversion left in `out_dir`, which would otherwise sit there stale.
        merge_lora: a LoRA run's three files with the adapters merged into plain official keys
            (W + (alpha / r) B A in fp32), instead of the PEFT-injected keys of the official LoRA files.
        trust_checkpoint: unpickle the DCP metadata and non-tensor entries with torch's unrestricted loaders.

    Returns the paths written, in the order written.
    """
    model_dir = find_model_dir(checkpoint, trust_checkpoint)
    out = Path(out_dir) if out_dir is not None else model_dir.parent
    problem = unwritable_reason(out)  # before the (long) read of the checkpoint
    if problem:
        raise CheckpointError(f"{out.absolute()}: cannot write the converted files there ({problem})")
    log.info("reading %s", model_dir)
    state = load_model_checkpoint(model_dir, trust_checkpoint=trust_checkpoint)
    adapter = None
    if any(lora.is_adapter_key(key) for key in state):
        state, adapter = _lora_states(state, model_dir, merge_lora)
    elif merge_lora:
        raise CheckpointError(f"{model_dir}: --merge-lora: not a LoRA run's checkpoint (no lora_A / lora_B keys)")
    ema_state = ema_state_dict(state)
    if ema and not ema_state:
        raise CheckpointError(f"{model_dir}: no '{EMA_PREFIX}*' keys (trained without EMA?); convert with --no-ema "
                              f"to write {MODEL_FILE} only")

    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # what a killed earlier conversion left half-written
    written = [lora.write_adapter(out / ADAPTER_DIR, *adapter)] if adapter is not None else []
    written.append(_save_atomic(state, out / MODEL_FILE))
    if ema:
        written.append(_save_atomic(ema_state, out / EMA_FP32_FILE))
        del state  # frees the net.* tensors before the bf16 copy is made; ema_state keeps the EMA ones
        written.append(_save_atomic(to_bf16(ema_state), out / EMA_BF16_FILE))
    else:
        for stale in (out / EMA_FP32_FILE, out / EMA_BF16_FILE):
            if stale.exists():
                log.info("removing %s, left by an earlier conversion", stale)
                stale.unlink()
            sidecar_path(stale).unlink(missing_ok=True)
    return written


def convert_to_diffusers(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                         ema: bool = True, dtype: torch.dtype | None = None, trust_checkpoint: bool = False,
                         max_shard_bytes: int = diffusers_format.MAX_SHARD_BYTES) -> list[Path]:
    """Write a diffusers transformer folder for a DCP checkpoint (see `find_model_dir`) or an official `.pt`.

    Args:
        out_dir: the folder; default `transformer/` beside the checkpoint's `model/` folder (or the `.pt`).
        ema: the EMA weights (a DCP checkpoint without `net_ema.*` keys is then an error); False: `net.*`.
        dtype: cast floating-point tensors to it; None keeps the stored dtypes.
        max_shard_bytes: the largest safetensors file; larger weights are sharded, with an index file.

    Returns the paths written."""
    path = Path(checkpoint)
    if path.suffix == ".pt" and path.is_file():
        source = path
    else:
        source = find_model_dir(checkpoint, trust_checkpoint)
        if ema and not any(k.startswith(EMA_PREFIX) for k in read_metadata(source, trust_checkpoint).state_dict_metadata):
            raise CheckpointError(f"{source}: no '{EMA_PREFIX}*' keys (trained without EMA?); convert with --no-ema "
                                  "to export the training weights")
    out = Path(out_dir) if out_dir is not None else source.parent / "transformer"
    problem = unwritable_reason(out)
    if problem:
        raise CheckpointError(f"{out.absolute()}: cannot write the diffusers folder there ({problem})")
    log.info("reading %s", source)
    state = read_state_dict(source, weights="ema" if ema else "net", trust_checkpoint=trust_checkpoint)
    if any(lora.is_adapter_key(key) for key in state):
        raise CheckpointError(f"{source}: a LoRA run's checkpoint; convert it with --merge-lora first, then export "
                              "the merged model_ema_fp32.pt with --to diffusers (the adapter itself is lora_adapter/)")
    config = _flavor_of(state, source)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    written = diffusers_format.save_diffusers(state, config, out, max_shard_bytes=max_shard_bytes)
    log.info("wrote %s (%d files)", out, len(written))
    return written


def _flavor_of(state: dict[str, torch.Tensor], source: Path) -> DiTConfig:
    """The configuration of the flavor whose DiT has exactly these keys and shapes."""
    found = {k: v.shape for k, v in state.items()}
    problems = []
    for flavor in FLAVORS:
        config = dit_config(flavor)
        with torch.device("meta"):
            expected = {k: v.shape for k, v in CosmosDiT(config).state_dict().items()}
        try:
            check_keys(expected, found, f"as {flavor!r}, the checkpoint")
            return config
        except CheckpointError as exc:
            problems.append(str(exc))
    raise CheckpointError(f"{source}: the weights fit no DiT flavor; {'; '.join(problems)}")


def _lora_states(state: dict[str, Any], model_dir: Path, merge: bool) -> tuple[dict[str, Any], tuple[str, dict]]:
    """A LoRA run's model part -> (the state to write, (adapter_config.json text, the adapter to write)).

    The checkpoint holds `net.*` (frozen base + trained adapters, PEFT-injected keys) and `net_ema.*` (ours:
    the averaged adapters only, train/ema.py; the official trainer's: a whole EMA net). Written as the official LoRA run's files are: `net_ema.*` the whole
    EMA net in fp32 (the base, upcast, with the EMA adapters), the EMA files from it; or, with `merge`, both
    nets merged into plain keys. The adapter folder holds the EMA adapters (the training ones without EMA),
    with the run's adapter config, which the trainer saved beside the parts."""
    config_path = model_dir.parent / lora.CONFIG_FILE
    if config_path.is_file():
        config_text, cfg = lora.read_config(config_path)
    else:  # the official trainer records no adapter config: its LoRA runs use the official values
        cfg = LoraConfig()
        config_text = lora.config_json(cfg)
        log.warning("%s: missing (not a cosmos-engine run?); taking the official LoRA values, rank %d and alpha %g",
                    config_path, cfg.rank, cfg.alpha)
    net = {key[len(NET_PREFIX):]: value for key, value in state.items() if key.startswith(NET_PREFIX)}
    ema = {key[len(EMA_PREFIX):]: value for key, value in state.items() if key.startswith(EMA_PREFIX)}
    ema_net = {}
    if set(ema) == set(net):  # the official LoRA run's EMA: a whole second net
        ema_net = ema
    elif ema:  # ours: the averaged adapters only, on the one frozen base
        if set(ema) != {key for key in net if lora.is_adapter_key(key)}:
            raise CheckpointError(f"{model_dir}: its '{EMA_PREFIX}*' keys are neither the adapters of its "
                                  f"'{NET_PREFIX}*' nor a whole EMA net")
        ema_net = {key: ema[key] if key in ema else value.float() if value.is_floating_point()
                   else value for key, value in net.items()}
    adapter = lora.adapter_state(ema_net or net)
    if merge:
        net = lora.merge_injected(net, cfg, f"{model_dir} ('{NET_PREFIX}*')")
        ema_net = lora.merge_injected(ema_net, cfg, f"{model_dir} ('{EMA_PREFIX}*')") if ema_net else {}
    out = {NET_PREFIX + key: value for key, value in net.items()}
    out.update({EMA_PREFIX + key: value for key, value in ema_net.items()})
    return out, (config_text, adapter)


def _save_atomic(state: dict[str, Any], path: Path) -> Path:
    """torch.save to a temporary file in `path`'s folder, flushed to disk, then renamed over `path`; then its
    sha256 sidecar. The old sidecar goes before the rename, so no reader pairs the new file with it."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        digest = file_sha256(tmp)
        sidecar_path(path).unlink(missing_ok=True)
    write_sidecar(path, digest)
    log.info("wrote %s (%d entries, sha256 %s)", path, len(state), digest)
    return path


def run_checkpoint(recipe: str | os.PathLike, trust_checkpoint: bool = False) -> Path:
    """The newest complete `iter_XXXXXXXXX` folder of the run that `recipe` trains, under the active output
    root; CheckpointError naming the checkpoints folder when it holds none."""
    recipe = Path(recipe).expanduser().absolute()
    checkpoints = run_dir_for(load_recipe(recipe).job) / "checkpoints"
    latest = latest_checkpoint(checkpoints, trust_checkpoint)
    if latest is None:
        raise CheckpointError(f"{checkpoints}: no complete checkpoint of the run {recipe} trains; train it first "
                              f"(cosmos-engine run {recipe})")
    return latest


def run_ema_file(recipe: str | os.PathLike, trust_checkpoint: bool = False) -> Path:
    """What `run:RECIPE.toml` names: the converted `model_ema_fp32.pt` of `run_checkpoint(recipe)`."""
    path = run_checkpoint(recipe, trust_checkpoint) / EMA_FP32_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: the run's latest checkpoint is not converted yet; run "
                              f"`cosmos-engine convert {recipe}` first")
    return path
