"""Every broken input a user can hand the CLI gives one line on stderr and exit status 2, never a traceback.

Each case builds its bad input in its own folder and runs the real CLI in a subprocess (cwd = that folder,
output root under it). Sizes are tiny (9-frame 32x48 clips, 1 step) and every case stops before any model
runs, so a subprocess spends most of its ~3 s importing torch: the cases run two at a time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from cosmos_engine.data.prepare import prepare_synthetic
from cosmos_engine.infer.pipeline import png_bytes
from tests.data.test_prepare import write_audio_only

REPO = Path(__file__).resolve().parents[1]
POSTTRAIN = REPO / "recipes" / "tiny_posttrain.toml"
INFER = REPO / "recipes" / "tiny_infer.toml"
SMALL_RUN = ["--set", "data.num_frames=9", "--set", "data.height=32", "--set", "data.width=48",
             "--set", "train.max_steps=1"]
SMALL_INFER = ["--set", "infer.num_frames=5", "--set", "infer.height=32", "--set", "infer.width=48",
               "--set", "infer.num_steps=1", "--no-progress"]


class Bad(NamedTuple):
    args: list            # CLI arguments after `cosmos-engine`
    expected: list[str]   # texts the error line must contain (the file, key or value, and what is wrong)
    env: dict | None = None  # added to the command's environment


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A prepared two-clip dataset; cases that break it work on their own copy."""
    out = tmp_path_factory.mktemp("data") / "dataset"
    prepare_synthetic(out, count=2, frames=9, height=32, width=48)
    return out


def run_cli(cwd: Path, args: list, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMAGINAIRE_OUTPUT_ROOT": str(cwd / "root"), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "cosmos_engine.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def copy_dataset(dataset: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp / "dataset"))


def source_folder(dataset: Path, tmp: Path) -> Path:
    """A folder of two good clips, as `prepare SRC` reads."""
    src = tmp / "src"
    src.mkdir()
    for name in ("a", "b"):
        shutil.copyfile(dataset / "videos" / f"synthetic_000{name == 'b':d}.mp4", src / f"{name}.mp4")
    return src


def a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("not a folder")
    return tmp / "afile"


def run_on(dataset: Path, *extra: str) -> list:
    return ["run", POSTTRAIN, "--set", f"data.dataset_dir={dataset}", *SMALL_RUN, *extra]


def infer_with(tmp: Path, source: Path, *extra) -> list:
    (tmp / "ck.pt").touch()  # never read: every case stops before the checkpoint is loaded
    return ["infer", source, *SMALL_INFER, "--checkpoint-path", tmp / "ck.pt", *extra]


# --- the cases: name -> builder(tmp_path, dataset) -> Bad ---------------------------------------------------------

def prepare_caption_not_utf8(tmp, dataset):
    src = source_folder(dataset, tmp)
    (src / "a.txt").write_bytes(b"\xff\xfe a robot")
    (src / "b.txt").write_text("A robot.")
    return Bad(["prepare", src, "--out", tmp / "out", "--num-frames", "9"], [str(src / "a.txt"), "not UTF-8"])


def prepare_png_named_mp4(tmp, dataset):
    src = tmp / "src"
    src.mkdir()
    (src / "still.mp4").write_bytes(png_bytes(np.zeros((32, 48, 3), np.uint8)))
    return Bad(["prepare", src, "--out", tmp / "out", "--prompt", "x", "--num-frames", "9"],
               [str(src / "still.mp4"), "not a decodable video"])


def prepare_out_is_a_file(tmp, dataset):
    return Bad(["prepare", "--synthetic", "1", "--frames", "9", "--size", "32x48", "--out", a_file(tmp)],
               [str(tmp / "afile"), "is a file, not a folder"])


def prepare_out_unwritable(tmp, dataset):
    # Tests run as root, where permission bits do not stop a write: a file in the path does.
    out = a_file(tmp) / "sub"
    return Bad(["prepare", "--synthetic", "1", "--frames", "9", "--size", "32x48", "--out", out],
               [str(out), "is a file, not a folder"])


def run_caption_not_utf8(tmp, dataset):
    copy = copy_dataset(dataset, tmp)
    (copy / "metas" / "synthetic_0001.txt").write_bytes(b"A robot \xff")
    return Bad(run_on(copy), [str(copy / "metas" / "synthetic_0001.txt"), "not UTF-8"])


def run_caption_empty(tmp, dataset):
    copy = copy_dataset(dataset, tmp)
    (copy / "metas" / "synthetic_0000.txt").write_text("  \n")
    return Bad(run_on(copy), [str(copy / "metas" / "synthetic_0000.txt"), "is empty"])


def run_relative_dataset_named_absolute(tmp, dataset):
    return Bad(run_on(Path("no_such_dataset")), [str(tmp / "no_such_dataset" / "videos"), "not found"])


def run_output_root_is_a_file(tmp, dataset):
    return Bad(run_on(dataset, "--set", f"job.output_root={a_file(tmp)}"),
               ["job.output_root", str(tmp / "afile"), "is a file, not a folder"])


def run_output_root_unwritable(tmp, dataset):
    root = a_file(tmp) / "runs"
    return Bad(run_on(dataset), ["$IMAGINAIRE_OUTPUT_ROOT", str(root), "is a file, not a folder"],
               {"IMAGINAIRE_OUTPUT_ROOT": str(root)})


def run_output_root_variable_empty(tmp, dataset):
    return Bad(run_on(dataset), ["$IMAGINAIRE_OUTPUT_ROOT is set but empty"], {"IMAGINAIRE_OUTPUT_ROOT": ""})


def run_job_name_escapes_the_root(tmp, dataset):
    return Bad(run_on(dataset, "--set", "job.name=../../x"), ["job.name = '../../x' is invalid", "plain folder name"])


def run_job_group_empty(tmp, dataset):
    return Bad(run_on(dataset, "--set", "job.group="), ["job.group = '' is invalid"])


def check_applies_the_infer_rules(tmp, dataset):
    return Bad(["check", POSTTRAIN, "--set", "infer.num_frames=8"], ["infer.num_frames = 8 is invalid", "1 + 4k"])


def check_unset_variable_in_a_path(tmp, dataset):
    return Bad(["check", POSTTRAIN, "--set", "data.dataset_dir=$COSMOS_NO_SUCH_VAR/data"],
               ["data.dataset_dir", "$COSMOS_NO_SUCH_VAR is not set"])


def infer_output_dir_is_a_file(tmp, dataset):
    return Bad(infer_with(tmp, INFER, "--output-dir", a_file(tmp)), ["infer.output_dir", str(tmp / "afile"), "is a file"])


def infer_output_dir_unwritable(tmp, dataset):
    return Bad(infer_with(tmp, INFER, "--set", f"infer.output_dir={a_file(tmp) / 'out'}"),
               ["infer.output_dir", str(tmp / "afile"), "is a file"])


def infer_sample_file_is_a_folder(tmp, dataset):
    (tmp / "samples.json").mkdir()
    return Bad(infer_with(tmp, tmp / "samples.json", "--recipe", INFER), [str(tmp / "samples.json"), "is a folder"])


def infer_audio_only_input(tmp, dataset):
    write_audio_only(tmp / "sound.mp4")
    return Bad(infer_with(tmp, INFER, "--output-dir", tmp / "out", "--set", "infer.num_conditional_frames=2",
                          "--set", "infer.input_path=sound.mp4"),
               ["infer.input_path", str(tmp / "sound.mp4"), "no video stream"])


def convert_out_dir_is_a_file(tmp, dataset):
    import torch
    import torch.distributed.checkpoint as dcp

    dcp.save({"net.w": torch.zeros(2), "net_ema.w": torch.zeros(2)}, checkpoint_id=tmp / "iter" / "model", no_dist=True)
    return Bad(["convert", tmp / "iter", a_file(tmp)], [str(tmp / "afile"), "cannot write the converted files"])


CASES: list[Callable[[Path, Path], Bad]] = [
    prepare_caption_not_utf8, prepare_png_named_mp4, prepare_out_is_a_file, prepare_out_unwritable,
    run_caption_not_utf8, run_caption_empty, run_relative_dataset_named_absolute, run_output_root_is_a_file,
    run_output_root_unwritable, run_output_root_variable_empty, run_job_name_escapes_the_root, run_job_group_empty,
    check_applies_the_infer_rules, check_unset_variable_in_a_path,
    infer_output_dir_is_a_file, infer_output_dir_unwritable, infer_sample_file_is_a_folder, infer_audio_only_input,
    convert_out_dir_is_a_file,
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, dataset) -> dict[str, tuple[Bad, subprocess.CompletedProcess]]:
    """case name -> (the case, what the CLI did); inputs are built one by one, the commands run two at a time."""
    folders = {build.__name__: tmp_path_factory.mktemp(build.__name__) for build in CASES}
    cases = {build.__name__: build(folders[build.__name__], dataset) for build in CASES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {name: pool.submit(run_cli, folders[name], bad.args, bad.env) for name, bad in cases.items()}
        return {name: (cases[name], run.result()) for name, run in runs.items()}


@pytest.mark.parametrize("name", [build.__name__ for build in CASES])
def test_bad_input_gives_one_line_and_exit_2(name, outcomes):
    bad, result = outcomes[name]
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("cosmos-engine ") and all(text in lines[0] for text in bad.expected), lines[0]


def test_skip_bad_lists_a_video_with_a_bad_caption_and_prepares_the_rest(tmp_path, dataset):
    src = source_folder(dataset, tmp_path)
    (src / "a.txt").write_bytes(b"\xff\xfe a robot")
    (src / "b.txt").write_text("A robot.")
    result = run_cli(tmp_path, ["prepare", src, "--out", tmp_path / "out", "--num-frames", "9", "--skip-bad"])
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "1 videos ready" in result.stdout and f"{src / 'a.txt'}: the caption is not UTF-8" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "videos").iterdir()) == ["b.mp4"]
