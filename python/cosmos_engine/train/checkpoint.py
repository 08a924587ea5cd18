"""DCP checkpoints in the official layout, written so that a crash never leaves a loadable half.

    <run>/checkpoints/iter_000000200/{model,optim,scheduler,trainer}/   (each a DCP folder: .metadata + shards)
    <run>/checkpoints/latest_checkpoint.txt                              ("iter_000000200\\n")

Saving writes into `iter_XXXXXXXXX.tmp/`, renames it to `iter_XXXXXXXXX/` once every DCP save has
finished on every rank, then replaces `latest_checkpoint.txt` atomically (temp file + os.replace), then
deletes all but the newest `keep_last` complete checkpoints. A folder counts as complete only when every
part's DCP `.metadata` is readable and every data file it names is there, as long as recorded; resume takes
the newest complete one and names any newer broken one it skips. A `.tmp` folder (an interrupted save) is
never loaded and is removed at the next start or save. A disk that fills up during a save is one line
naming the file; the previous checkpoint stays intact.

Every part is read through `cosmos_engine.dcp_io` (no pickled object is built unless trusted), and the
trainer part holds tensors only (the iteration and the data sampler's position).

`model/` holds `net.*` (the trained network) and `net_ema.*` (the fp32 EMA), the official key layout that
`cosmos-engine convert` and the official converter read.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from cosmos_engine import dcp_io
from cosmos_engine.atomic import atomic_write, disk_full, remove_stale_temporaries
from cosmos_engine.checkpoint_folders import (LATEST, PARTS, checkpoint_problem, complete_checkpoints,
                                              iteration_dirname, latest_checkpoint)
from cosmos_engine.errors import CheckpointError

log = logging.getLogger(__name__)


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


def _dcp_save(state: dict[str, Any], folder: Path) -> None:
    """DCP save; single-process use is intended here, so its warning about it is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        dcp.save(state, checkpoint_id=folder, no_dist=not _distributed())


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    """Saves and restores the training state of one run folder's `checkpoints/`."""

    def __init__(self, checkpoints_dir: str | os.PathLike, keep_last: int, trust_checkpoint: bool = False):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.dir = Path(checkpoints_dir)
        self.keep_last = keep_last
        self.trust_checkpoint = trust_checkpoint  # read pickled objects in the parts (--trust-checkpoint)

    def save(self, iteration: int, parts: Mapping[str, dict[str, Any]], files: Mapping[str, str] | None = None) -> Path:
        """Save the state dicts of PARTS (collective: every rank calls it) and return the final folder.
        `files` (name -> text) are written beside the parts, published with them (a LoRA run's adapter config)."""
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
        try:
            for name in PARTS:
                _dcp_save(parts[name], staging / name)
                _maybe_die_during_save(iteration)
            if _rank() == 0:
                for name, text in (files or {}).items():
                    atomic_write(staging / name, text)
        except (OSError, RuntimeError, CheckpointException) as exc:
            causes = [cause for cause, _ in exc.failures.values()] if isinstance(exc, CheckpointException) else [exc]
            if not disk_full(causes, self.dir):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # give the space back; the partial save is useless
            previous = self.latest()
            raise CheckpointError(f"no space left on device while writing {staging}; the previous checkpoint "
                                  f"{previous.name + ' is intact' if previous else '(none) was never written'}; "
                                  "free some space and rerun the same command to resume") from None
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

    def remove_leftovers(self) -> None:
        """Remove what interrupted saves left (staging folders, temporary files). Only the run that holds
        the run folder's lock calls it, so nothing here is being written."""
        if not self.dir.is_dir():
            return
        for entry in sorted(self.dir.iterdir()):
            if not entry.is_dir() or not entry.name.endswith((".tmp", ".old")):
                continue
            published = self.dir / entry.name.rsplit(".", 1)[0]
            if entry.name.endswith(".old") and not published.exists():
                # Killed between moving a checkpoint aside and publishing its replacement: the old one is good.
                log.warning("restoring %s from %s, left by an interrupted save", published, entry)
                os.replace(entry, published)
                continue
            log.info("removing %s, left by an interrupted save", entry)
            shutil.rmtree(entry, ignore_errors=True)
        remove_stale_temporaries(self.dir)

    def _purge(self) -> None:
        self.remove_leftovers()
        complete = complete_checkpoints(self.dir, self.trust_checkpoint)
        for _, folder in complete[: max(0, len(complete) - self.keep_last)]:
            shutil.rmtree(folder, ignore_errors=True)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.dir, self.trust_checkpoint)

    def load(self, folder: Path, parts: Mapping[str, dict[str, Any]]) -> None:
        """Load the given parts in place (collective under torchrun: DCP fills each rank's shards)."""
        problem = checkpoint_problem(folder, tuple(parts), self.trust_checkpoint)
        if problem is not None:
            raise CheckpointError(f"{folder}: not a complete checkpoint ({problem}); refusing to load it")
        for name, state in parts.items():
            dcp_io.load_dcp(state, folder / name, trust_checkpoint=self.trust_checkpoint, no_dist=not _distributed())
