"""`cosmos-engine convert`: a training checkpoint (DCP folder) -> the three official inference files.

What the official `scripts/convert_distcp_to_pt.py` writes (reference/vae_data_io.md §4.7), key for key:
* `model.pt`: every key of the DCP `model/` folder as saved: `net.*` (the trained weights, bf16 in the
  official trainer) and `net_ema.*` (the fp32 EMA copy), full tensors, in the order of the DCP metadata;
* `model_ema_fp32.pt`: only the `net_ema.*` entries, renamed `net.*`, dtypes unchanged (the inference
  loader reads `net.*`, and the EMA weights are the ones to sample with);
* `model_ema_bf16.pt`: the same with every float32 tensor cast to bfloat16 (int64 buffers untouched): the
  file the official inference recommends.

Where the files go: by default beside the checkpoint, i.e. in the `iter_XXXXXXXXX/` folder next to its
`model/` subfolder, which is where the official documentation puts them (`convert_distcp_to_pt.py
$CHECKPOINT_DIR/model $CHECKPOINT_DIR`). A checkpoint may be named by its `iter_XXXXXXXXX/` folder, its
`model/` folder, or a run folder / `checkpoints/` folder, whose `latest_checkpoint.txt` picks the latest one.

Differences from the official script, all deliberate: the DCP folder is read in this one process with no
process group; each file is written under a temporary name in its folder and renamed, so an existing file
is replaced only by a complete one (the official deletes the old files first); a folder that is not a DiT
model checkpoint is refused before anything is written. And, as every checkpoint read in cosmos-engine,
nothing is unpickled beyond plain checkpoint data unless the caller trusts the checkpoint: the DCP
`.metadata` file is a pickle, read here with an unpickler that only builds DCP's own metadata classes, and
non-tensor entries are loaded with `weights_only=True` (`trust_checkpoint=True` restores torch's loaders).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from cosmos_engine.atomic import atomic_path
from cosmos_engine.errors import CheckpointError
from cosmos_engine.models.state_dict import METADATA_FILE, dcp_reader

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
EMA_FP32_FILE = "model_ema_fp32.pt"
EMA_BF16_FILE = "model_ema_bf16.pt"
NET_PREFIX = "net."
EMA_PREFIX = "net_ema."
LATEST_FILE = "latest_checkpoint.txt"


def find_model_dir(checkpoint: str | os.PathLike) -> Path:
    """The DCP `model/` folder that `checkpoint` names.

    `checkpoint` may be that folder itself, an `iter_XXXXXXXXX/` folder holding it, a `checkpoints/` folder
    or a run folder (holding `checkpoints/`); the last two resolve through `latest_checkpoint.txt`, which
    the trainer writes only after a checkpoint is complete.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder; expected a DCP checkpoint folder (iter_XXXXXXXXX/ or its model/)")
    for folder in (path, path / "checkpoints"):
        if (folder / LATEST_FILE).is_file():
            path = _latest_iteration(folder / LATEST_FILE)
            break
    if (path / METADATA_FILE).is_file():
        return path
    if (path / "model" / METADATA_FILE).is_file():
        return path / "model"
    if (path / "model").is_dir():
        raise CheckpointError(f"{path / 'model'}: no {METADATA_FILE} file; the checkpoint save did not finish, "
                              "or this is not a torch.distributed.checkpoint folder")
    raise CheckpointError(f"{path}: not a DCP checkpoint; expected {path / 'model' / METADATA_FILE} (an "
                          f"iter_XXXXXXXXX folder), {path / METADATA_FILE} (its model/ folder) or {LATEST_FILE} "
                          "(a run or checkpoints folder)")


def _latest_iteration(latest_file: Path) -> Path:
    name = latest_file.read_text().strip()
    if not name or Path(name).name != name:
        raise CheckpointError(f"{latest_file}: expected the name of a checkpoint folder such as iter_000000200, "
                              f"got {name!r}")
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
    reader = dcp_reader(model_dir, trust_checkpoint)
    try:
        metadata = reader.read_metadata()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{model_dir / METADATA_FILE}: unreadable DCP metadata ({exc})") from exc
    entries = metadata.state_dict_metadata
    wrong = [key for key in entries if not key.startswith((NET_PREFIX, EMA_PREFIX))]
    if not entries or wrong:
        shown = ", ".join(repr(key) for key in wrong[:3]) + (", ..." if len(wrong) > 3 else "")
        found = f"found {len(wrong)} others: {shown}" if wrong else "found no keys"
        raise CheckpointError(f"{model_dir}: not a DiT model checkpoint; every key must start with "
                              f"'{NET_PREFIX}' or '{EMA_PREFIX}', {found}")

    # Tensors are allocated from the metadata and filled in place; other entries (pickled objects, e.g.
    # TransformerEngine `_extra_state`) are placeholders that the planner replaces.
    state = {key: torch.empty(entry.size, dtype=entry.properties.dtype) if isinstance(entry, TensorStorageMetadata)
             else None for key, entry in entries.items()}
    planner = _Planner(trust_checkpoint)
    with warnings.catch_warnings():
        # One process with no process group is exactly what we mean; torch warns about it.
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        try:
            dcp.load(state, storage_reader=reader, planner=planner, no_dist=True)
        except CheckpointException as exc:  # a BaseException wrapping what failed: a missing or truncated data file
            causes = "; ".join(f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
                               for cause, _ in exc.failures.values())
            raise CheckpointError(f"{model_dir}: unreadable checkpoint data ({causes})") from None
    if planner.refused:
        refused = ", ".join(map(repr, planner.refused))
        raise CheckpointError(f"{model_dir}: entries {refused} hold pickled objects that weights_only loading "
                              "refuses; pass --trust-checkpoint if you trust this checkpoint's source")
    return state


def ema_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """`net_ema.*` entries renamed `net.*` (the tensors themselves, not copies), as `model_ema_fp32.pt`."""
    return {NET_PREFIX + key[len(EMA_PREFIX):]: value for key, value in state.items() if key.startswith(EMA_PREFIX)}


def to_bf16(state: dict[str, Any]) -> dict[str, Any]:
    """Every float32 tensor cast to bfloat16, everything else as it is, as `model_ema_bf16.pt`."""
    return {key: value.to(torch.bfloat16) if isinstance(value, torch.Tensor) and value.dtype == torch.float32 else value
            for key, value in state.items()}


def convert_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                       ema: bool = True, trust_checkpoint: bool = False) -> list[Path]:
    """Write `model.pt`, `model_ema_fp32.pt` and `model_ema_bf16.pt` for a DCP checkpoint.

    Args:
        checkpoint: the checkpoint (see `find_model_dir` for the folders accepted).
        out_dir: where the files go; default the folder holding `model/` (the `iter_XXXXXXXXX` folder).
        ema: also write the two EMA files (a checkpoint without `net_ema.*` keys is then an error, as in
            the official converter); False writes `model.pt` only and removes EMA files a previous
            conversion left in `out_dir`, which would otherwise sit there stale.
        trust_checkpoint: unpickle the DCP metadata and non-tensor entries with torch's unrestricted loaders.

    Returns the paths written, in the order written.
    """
    model_dir = find_model_dir(checkpoint)
    out = Path(out_dir) if out_dir is not None else model_dir.parent
    log.info("reading %s", model_dir)
    state = load_model_checkpoint(model_dir, trust_checkpoint=trust_checkpoint)
    ema_state = ema_state_dict(state)
    if ema and not ema_state:
        raise CheckpointError(f"{model_dir}: no '{EMA_PREFIX}*' keys (trained without EMA?); convert with --no-ema "
                              f"to write {MODEL_FILE} only")

    out.mkdir(parents=True, exist_ok=True)
    written = [_save_atomic(state, out / MODEL_FILE)]
    if ema:
        written.append(_save_atomic(ema_state, out / EMA_FP32_FILE))
        del state  # frees the net.* tensors before the bf16 copy is made; ema_state keeps the EMA ones
        written.append(_save_atomic(to_bf16(ema_state), out / EMA_BF16_FILE))
    else:
        for stale in (out / EMA_FP32_FILE, out / EMA_BF16_FILE):
            if stale.exists():
                log.info("removing %s, left by an earlier conversion", stale)
                stale.unlink()
    return written


def _save_atomic(state: dict[str, Any], path: Path) -> Path:
    """torch.save to a temporary file in `path`'s folder, flushed to disk, then renamed over `path`."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    log.info("wrote %s (%d entries)", path, len(state))
    return path


class _Planner(DefaultLoadPlanner):
    """Loads into the flat state dict as given; non-tensor entries with `weights_only` unless trusted.

    Entries that `weights_only` refuses are collected in `refused` rather than raised: DCP would wrap the
    exception in its own, and the caller reports them all at once."""

    def __init__(self, trust_checkpoint: bool) -> None:
        # No flattening of either kind: the keys are flat already, and flattening would make `self.state_dict`
        # a new dict, so the objects `load_bytes` stores would not reach the caller's.
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._trust = trust_checkpoint
        self.refused: list[str] = []

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        key = read_item.dest_index.fqn
        try:
            self.state_dict[key] = torch.load(value, weights_only=not self._trust)
        except pickle.UnpicklingError:
            self.refused.append(key)
