"""Helpers of the tests that run `cosmos-engine run` on the tiny recipe."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from cosmos_engine.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "tiny_posttrain.toml"
CLI = [sys.executable, "-m", "cosmos_engine.cli"]


def make_dataset(folder: Path, clips: int = 2) -> Path:
    assert cli_main(["prepare", "--synthetic", str(clips), "--out", str(folder)]) == 0
    return folder


def run_args(dataset: Path, name: str, steps: int, save_every: int, *extra: str, recipe: Path = RECIPE) -> list[str]:
    return ["run", str(recipe), "--set", f"data.dataset_dir={dataset}", "--set", f"job.name={name}",
            "--set", f"train.max_steps={steps}", "--set", f"checkpoint.save_every={save_every}", *extra]


def env_for(root: Path, **extra: str) -> dict:
    return {**os.environ, "IMAGINAIRE_OUTPUT_ROOT": str(root), "OMP_NUM_THREADS": "1", **extra}


def run_folder(root: Path, name: str) -> Path:
    return root / "cosmos_predict_v2p5" / "tiny" / name


def final_weights(root: Path, name: str, iteration: int) -> dict[str, torch.Tensor]:
    folder = run_folder(root, name) / "checkpoints" / f"iter_{iteration:09d}" / "model"
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(folder, Path(tmp) / "sd.pt")
        return torch.load(Path(tmp) / "sd.pt", weights_only=True)


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
