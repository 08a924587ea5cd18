"""Where runs live: the active output root and the run folder of a [job] table.

The root is `job.output_root`, else $IMAGINAIRE_OUTPUT_ROOT, else DEFAULT_OUTPUT_ROOT (the official
trainer's layout); the run folder is ROOT/project/group/name. Paths are absolute (a relative root starts at
the working directory), so every message shows where a run really is.
"""

from __future__ import annotations

import os
from pathlib import Path

from cosmos_engine.atomic import unwritable_reason
from cosmos_engine.config.schema import JobConfig
from cosmos_engine.errors import RecipeError

DEFAULT_OUTPUT_ROOT = "/tmp/imaginaire4-output"
ROOT_VARIABLE = "IMAGINAIRE_OUTPUT_ROOT"


def _root_setting(job: JobConfig | None) -> tuple[str, str]:
    """(the root as written, what set it) for messages."""
    if job is not None and job.output_root:
        return job.output_root, "job.output_root"
    value = os.environ.get(ROOT_VARIABLE)
    if value is None:
        return DEFAULT_OUTPUT_ROOT, "the default output root"
    if not value.strip():  # an empty root would silently put runs under the working directory
        raise RecipeError(f"${ROOT_VARIABLE} is set but empty: set it to a folder, or unset it to use "
                          f"{DEFAULT_OUTPUT_ROOT}")
    return value, f"${ROOT_VARIABLE}"


def output_root(job: JobConfig | None = None) -> Path:
    """The active root of all run folders, absolute (see the module docstring); RecipeError when
    $IMAGINAIRE_OUTPUT_ROOT is set but empty."""
    return Path(_root_setting(job)[0]).expanduser().absolute()


def run_dir_for(job: JobConfig) -> Path:
    """ROOT/PROJECT/GROUP/NAME, as the official trainer lays out its jobs; RecipeError naming the setting
    when the folder cannot be created there (a file in the way, no write permission)."""
    run_dir = output_root(job) / job.project / job.group / job.name
    problem = unwritable_reason(run_dir)
    if problem:
        value, source = _root_setting(job)
        raise RecipeError(f"{source} = {value!r}: cannot create the run folder {run_dir} ({problem})")
    return run_dir
