"""Owning a run folder: one run at a time, and a resume only with the recipe the checkpoints were trained with.

    <run>/run.lock              held with flock for the whole run by rank 0: {"pid", "host", "started"}
    <run>/training_recipe.json  the recipe values that decide the training result (`fingerprint`)
    <run>/replaced/<time>/      what `--overwrite` moved aside: the earlier run's checkpoints and records

`claim_run_folder` runs before anything else of a run is written. Rank 0 takes the lock and checks the
folder; the other ranks learn the outcome through the process group, so every rank fails with the same
one-line error. A lock file left behind by a dead process on this host is taken over with a warning; one
naming another host cannot be checked from here and is reported with the command that clears it.

The fingerprint is every recipe value except those that cannot change the trained weights: the step count,
logging and checkpoint cadence, the data loader's worker count, the run folder's own name, and [infer].
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.distributed as dist

from cosmos_engine.atomic import atomic_write, process_alive
from cosmos_engine.config.load import write_resolved
from cosmos_engine.config.schema import Recipe
from cosmos_engine.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
RECIPE_RECORD = "training_recipe.json"
REPLACED_DIR = "replaced"
CHECKPOINTS_DIR = "checkpoints"
# What --overwrite moves aside (besides the checkpoints): the records of the run being replaced.
RUN_RECORDS = ("metrics.jsonl", "recipe.toml", RECIPE_RECORD)
NOT_FINGERPRINTED = {"train.max_steps", "train.log_every", "data.num_workers",
                     "job.project", "job.group", "job.name", "job.output_root"}
NOT_FINGERPRINTED_TABLES = {"checkpoint", "infer"}


class RunFolderBusy(UserError):
    """Another run holds the run folder."""


class RecipeChanged(UserError):
    """A resume with recipe values other than those the checkpoints were trained with."""


@dataclasses.dataclass(frozen=True)
class RunFolderOptions:
    allow_recipe_change: bool = False  # resume with changed values: apply them from the next step
    overwrite: bool = False            # resume = false into a folder with checkpoints: move them aside


def fingerprint(recipe: Recipe) -> dict[str, Any]:
    """The "table.key" -> value pairs that decide the training result (JSON values: tuples become lists)."""
    values = {}
    for table, content in dataclasses.asdict(recipe).items():
        if table in NOT_FINGERPRINTED_TABLES:
            continue
        for key, value in content.items():
            if f"{table}.{key}" not in NOT_FINGERPRINTED:
                values[f"{table}.{key}"] = list(value) if isinstance(value, tuple) else value
    return values


def changed_keys(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose value differs. A key the record lacks is one added to the schema after the run started: the
    run trained with its default then, so it has changed only when the current value is not the default."""
    defaults = fingerprint(Recipe())
    recorded = {**{k: v for k, v in defaults.items() if k not in recorded}, **recorded}
    return sorted(key for key in recorded.keys() | current.keys() if recorded.get(key) != current.get(key))


# ----------------------------------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------------------------------


def _holder_text(holder: dict) -> str:
    if not holder:  # the winner of a race has the lock but has not written itself into the file yet
        return "its holder is starting and not recorded yet"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')}"


class RunLock:
    """An exclusive flock on <run>/run.lock, the holder written inside. flock is released by the kernel when
    the holder dies, so a held lock always means a live run; the file's content only tells who it was."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"{self.path}: cannot create the run lock ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderBusy(f"{self.path.parent}: another run is using this run folder ({_holder_text(holder)}); "
                                "wait for it to end, stop it, or choose another job.name") from None
        except OSError as exc:  # e.g. ENOLCK: a network file system mounted without locking
            os.close(fd)
            raise UserError(f"{self.path}: cannot lock the run folder ({exc.strerror}); put the output root on a "
                            "file system with file locks") from None
        previous = _read_holder(fd)
        if previous:
            if previous.get("host") != socket.gethostname():
                os.close(fd)
                raise RunFolderBusy(f"{self.path.parent}: locked by {_holder_text(previous)}, which cannot be "
                                    f"checked from this host; if no run is using the folder, clear the lock with "
                                    f"`rm {self.path}` and rerun")
            pid = previous.get("pid")
            state = "still running but not holding it" if isinstance(pid, int) and process_alive(pid) else "gone"
            log.warning("%s: taking over the lock left by %s (that process is %s)", self.path, _holder_text(previous),
                        state)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Empty the file (a clean end leaves no holder to report) and unlock. The file itself stays: removing
        it could let a run that opened it just before lock a file no longer in the folder."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {"pid": "?", "host": "?", "started": "? (unreadable lock file)"}
    return holder if isinstance(holder, dict) else {}


# ----------------------------------------------------------------------------------------------------------------------
# The resume policy
# ----------------------------------------------------------------------------------------------------------------------


def _has_checkpoints(run_dir: Path) -> bool:
    folder = run_dir / CHECKPOINTS_DIR
    return folder.is_dir() and any(entry.name.startswith("iter_") for entry in folder.iterdir())


def _move_aside(run_dir: Path) -> Path:
    """Move the earlier run's checkpoints and records to <run>/replaced/<time>/ and return that folder."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    target = run_dir / REPLACED_DIR / stamp
    target.mkdir(parents=True)
    for name in (CHECKPOINTS_DIR, *RUN_RECORDS):
        if (run_dir / name).exists():
            shutil.move(run_dir / name, target / name)
    return target


def _check_folder(run_dir: Path, recipe: Recipe, options: RunFolderOptions) -> list[str]:
    """Apply the resume policy (rank 0, under the lock); return the recipe keys that changed and will apply."""
    current = fingerprint(recipe)
    record_path = run_dir / RECIPE_RECORD
    if not _has_checkpoints(run_dir):
        record_recipe(run_dir, recipe)
        return []
    if not recipe.checkpoint.resume:
        if not options.overwrite:
            raise RecipeChanged(f"{run_dir}: checkpoint.resume = false, but this run folder holds checkpoints of an "
                                "earlier run; choose another job.name, or pass --overwrite to move them aside to "
                                f"{run_dir / REPLACED_DIR}/")
        moved = _move_aside(run_dir)
        log.warning("--overwrite: the earlier run's checkpoints and records moved to %s", moved)
        record_recipe(run_dir, recipe)
        return []
    try:
        recorded = json.loads(record_path.read_text())
    except FileNotFoundError:
        log.warning("%s: no record of the recipe the checkpoints were trained with; recording the current one",
                    record_path)
        record_recipe(run_dir, recipe)
        return []
    except (OSError, ValueError) as exc:
        if not options.allow_recipe_change:
            raise UserError(f"{record_path}: unreadable ({exc}); it records the recipe the checkpoints were trained "
                            "with. Restore it, or pass --allow-recipe-change to record the current recipe") from None
        log.warning("%s: unreadable (%s); --allow-recipe-change: recording the current recipe", record_path, exc)
        record_recipe(run_dir, recipe)
        return []
    changed = changed_keys(recorded, current)
    if changed and not options.allow_recipe_change:
        shown = ", ".join(f"{key} ({recorded.get(key)!r} -> {current.get(key)!r})" for key in changed)
        raise RecipeChanged(f"{run_dir}: the recipe differs from the one its checkpoints were trained with: {shown}; "
                            "start a new run with --set checkpoint.resume=false and another job.name, or pass "
                            "--allow-recipe-change to resume with the new values")
    if changed:
        log.warning("--allow-recipe-change: resuming with new values for %s (applied from the next step; "
                    "recorded once the checkpoint has loaded)", ", ".join(changed))
    return changed


def record_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Record `recipe` as the one the run folder's checkpoints are trained with (rank 0)."""
    atomic_write(run_dir / RECIPE_RECORD, json.dumps(fingerprint(recipe), indent=1) + "\n")


def _share_outcome(error: Exception | None, changed: list[str]) -> list[str]:
    """Rank 0's outcome to every rank: each raises the same user error, or all go on with the same changed
    keys. A bug on rank 0 keeps its traceback there; the other ranks stop with one line pointing to it."""
    outcome = [type(error).__name__ if error else None, str(error) if error else None, changed]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(outcome, src=0)
    kind, message, changed = outcome
    if error is not None and not isinstance(error, UserError):
        raise error
    if kind is not None:
        user_errors = {cls.__name__: cls for cls in (RunFolderBusy, RecipeChanged, UserError)}
        if kind not in user_errors:
            raise UserError(f"rank 0 failed while claiming the run folder ({kind}: {message}); see its traceback")
        raise user_errors[kind](message)
    return changed


@contextlib.contextmanager
def claim_run_folder(run_dir: Path, recipe: Recipe, options: RunFolderOptions, is_main: bool) -> Iterator[list[str]]:
    """Hold the run folder for the block (lock, resume policy, resolved recipe written); yields the recipe
    keys whose new values the resume applies (empty unless --allow-recipe-change found changes; the caller
    records the new recipe with `record_recipe` once the checkpoint has loaded)."""
    lock = RunLock(run_dir)
    changed: list[str] = []
    error = None
    if is_main:
        try:
            lock.acquire()
            changed = _check_folder(run_dir, recipe, options)
            write_resolved(recipe, run_dir)
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then raised
            lock.release()
            error = exc
    changed = _share_outcome(error, changed)
    try:
        yield changed
    finally:
        lock.release()
