"""The checkpoint folders of a run, as training writes them and `convert` / `infer` read them:

    <run>/checkpoints/iter_000000200/{model,optim,scheduler,trainer}/   (each a DCP folder)
    <run>/checkpoints/latest_checkpoint.txt

A folder is complete when every part's DCP `.metadata` is readable and names only data files that are there
(`dcp_io.folder_problem`). This module sits below `train/` (which saves, `train/checkpoint.py`) and the jobs
that only read checkpoints, so those never import the trainer.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from cosmos_engine import dcp_io

log = logging.getLogger(__name__)

PARTS = ("model", "optim", "scheduler", "trainer")
LATEST = "latest_checkpoint.txt"
_ITER_RE = re.compile(r"iter_([0-9]{9})")  # matched whole (fullmatch)


def iteration_dirname(iteration: int) -> str:
    return f"iter_{iteration:09d}"


def is_iteration_name(name: str) -> bool:
    """Whether `name` is a checkpoint folder's name, iter_%09d."""
    return _ITER_RE.fullmatch(name) is not None


def checkpoint_problem(folder: Path, parts: tuple[str, ...] = PARTS, trust_checkpoint: bool = False) -> str | None:
    """None when every part of the checkpoint folder is whole (see `dcp_io.folder_problem`), else what is
    wrong, naming the file. Metadata that only --trust-checkpoint could read raises UntrustedContent."""
    for part in parts:
        problem = dcp_io.folder_problem(folder / part, trust_checkpoint)
        if problem is not None:
            return problem
    return None


def iteration_folders(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, folder) of every published checkpoint folder, complete or not, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for entry in checkpoints_dir.iterdir():
        match = _ITER_RE.fullmatch(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def complete_checkpoints(checkpoints_dir: Path, trust_checkpoint: bool = False) -> list[tuple[int, Path]]:
    """(iteration, folder) of every complete checkpoint, oldest first."""
    return [(it, folder) for it, folder in iteration_folders(checkpoints_dir)
            if checkpoint_problem(folder, trust_checkpoint=trust_checkpoint) is None]


def latest_checkpoint(checkpoints_dir: Path, trust_checkpoint: bool = False) -> Path | None:
    """The newest complete checkpoint, warning about each newer folder skipped as broken.

    latest_checkpoint.txt is written for the official tools, but the folders decide: the pointer is
    updated after the rename, so a crash in between leaves it one checkpoint behind, never ahead."""
    for _, folder in reversed(iteration_folders(checkpoints_dir)):
        problem = checkpoint_problem(folder, trust_checkpoint=trust_checkpoint)
        if problem is None:
            return folder
        log.warning("skipping the broken checkpoint %s: %s", folder, problem)
    return None
