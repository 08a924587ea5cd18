"""The command line: exit codes and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cosmos_engine.cli import main

CLI = [sys.executable, "-m", "cosmos_engine.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_info_exits_zero_and_reports_the_build():
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["build"]["loaded"] is True
    assert report["build"]["ops"]["adaln_layernorm_fwd"]["cpu"] is True
    assert report["attention_backend"]["cpu float32"].endswith(f"CPU kernel ({report['build']['attention_cpu_isa']})")
    human = run_cli("info")
    assert human.returncode == 0 and "attention" in human.stdout and "adaln_layernorm_fwd" in human.stdout


def test_recipe_error_is_one_line_exit_2(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text("[train]\nmax_step = 3\n")
    result = run_cli("check", str(recipe))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(recipe) in lines[0] and "train.max_step" in lines[0] and "Traceback" not in result.stderr


def test_check_prints_resolved_recipe(capsys):
    repo = Path(__file__).resolve().parents[1]
    assert main(["check", str(repo / "recipes" / "tiny_posttrain.toml"), "--set", "train.max_steps=3"]) == 0
    assert "max_steps = 3" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_the_process_group_is_destroyed_when_a_command_ends(tmp_path):
    """A job's process group does not outlive the command, whichever way it ends (here: an error)."""
    script = (
        "import os, sys, torch.distributed as dist\n"
        "from cosmos_engine.cli import main\n"
        "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29533')\n"
        "dist.init_process_group('gloo', rank=0, world_size=1)\n"
        f"code = main(['check', {str(tmp_path / 'missing.toml')!r}])\n"
        "print(code, dist.is_initialized())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stderr
