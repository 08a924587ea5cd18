"""DCP checkpoints in the official layout, written so that a crash never leaves a loadable half.

    <run>/checkpoints/iter_000000200/{model,optim,scheduler,trainer}/   (each a DCP folder: .metadata + shards)
    <run>/checkpoints/latest_checkpoint.txt                              ("iter_000000200\\n")

Saving writes into `iter_XXXXXXXXX.tmp/`, renames it to `iter_XXXXXXXXX/` once every DCP save has
finished on every rank, then replaces `latest_checkpoint.txt` atomically (temp file + os.replace), then
deletes all but the newest `keep_last` complete checkpoints. Loading trusts a folder only if all four
parts have their DCP `.metadata`; a `.tmp` folder (a save that was interrupted) is never loaded and is
removed at the next save.

`model/` holds `net.*` (the trained network) and `net_ema.*` (the fp32 EMA), the official key layout that
`cosmos-engine convert` and the official converter read.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from cosmos_engine.atomic import atomic_write
from cosmos_engine.errors import CheckpointError

log = logging.getLogger(__name__)

PARTS = ("model", "optim", "scheduler", "trainer")
LATEST = "latest_checkpoint.txt"
_ITER_RE = re.compile(r"^iter_(\d{9})$")


def iteration_dirname(iteration: int) -> str:
    return f"iter_{iteration:09d}"


def is_complete(folder: Path, parts: tuple[str, ...] = PARTS) -> bool:
    """True when every part of the checkpoint folder has its DCP metadata (the last file DCP writes)."""
    return all((folder / part / ".metadata").is_file() for part in parts)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


# Fault injection for the crash tests: "kill_during_save:N" makes the process SIGKILL itself in the middle of
# saving iteration N (after the model part is on disk, before the folder is published).
FAULT_ENV = "COSMOS_ENGINE_FAULT"


def _maybe_die_during_save(iteration: int) -> None:
    if os.environ.get(FAULT_ENV) == f"kill_during_save:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)


def _dcp(fn, *args, **kwargs):
    """DCP save/load; single-process use is intended here, so its warning about it is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        return fn(*args, no_dist=not _distributed(), **kwargs)


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, folder) of every complete checkpoint, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for entry in checkpoints_dir.iterdir():
        match = _ITER_RE.match(entry.name)
        if match and entry.is_dir() and is_complete(entry):
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint. latest_checkpoint.txt is written for the official tools, but
    the folders decide: the pointer is updated after the rename, so a crash in between leaves it one
    checkpoint behind, never ahead."""
    candidates = complete_checkpoints(checkpoints_dir)
    return candidates[-1][1] if candidates else None


class CheckpointManager:
    """Saves and restores the training state of one run folder's `checkpoints/`."""

    def __init__(self, checkpoints_dir: str | os.PathLike, keep_last: int):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.dir = Path(checkpoints_dir)
        self.keep_last = keep_last

    def save(self, iteration: int, parts: Mapping[str, dict[str, Any]]) -> Path:
        """Save the state dicts of PARTS (collective: every rank calls it) and return the final folder."""
        missing = set(PARTS) - set(parts)
        if missing:
            raise ValueError(f"checkpoint parts missing: {sorted(missing)}")
        final = self.dir / iteration_dirname(iteration)
        staging = self.dir / (final.name + ".tmp")
        if _rank() == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
        _barrier()
        for name in PARTS:
            _dcp(dcp.save, parts[name], checkpoint_id=staging / name)
            _maybe_die_during_save(iteration)
        _barrier()
        if _rank() == 0:
            if final.exists():  # the same iteration saved again (e.g. after a resume): replace it whole
                trash = self.dir / (final.name + ".old")
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(final, trash)
                os.replace(staging, final)
                shutil.rmtree(trash)
            else:
                os.replace(staging, final)
            _fsync_dir(self.dir)
            atomic_write(self.dir / LATEST, final.name + "\n")
            self._purge()
        _barrier()
        log.info("saved checkpoint %s", final)
        return final

    def _purge(self) -> None:
        for entry in self.dir.iterdir():  # leftovers of interrupted saves
            if entry.is_dir() and (entry.name.endswith(".tmp") or entry.name.endswith(".old")):
                shutil.rmtree(entry, ignore_errors=True)
        complete = complete_checkpoints(self.dir)
        for _, folder in complete[: max(0, len(complete) - self.keep_last)]:
            shutil.rmtree(folder, ignore_errors=True)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.dir)

    @staticmethod
    def load(folder: Path, parts: Mapping[str, dict[str, Any]]) -> None:
        """Load the given parts in place (DCP fills the tensors of each state dict)."""
        if not is_complete(folder, tuple(parts)):
            raise CheckpointError(f"{folder}: not a complete checkpoint (a part has no DCP .metadata); refusing to load it")
        for name, state in parts.items():
            _dcp(dcp.load, state, checkpoint_id=folder / name)
