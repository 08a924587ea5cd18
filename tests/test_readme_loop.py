"""The README's first command (prepare, run, convert, infer on the tiny default) passes as written, with
$IMAGINAIRE_OUTPUT_ROOT set to a fresh folder: nothing in it may depend on the default output root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def quick_start_command() -> str:
    """The bash block under "## Quick start", for this test's venv, without the install step."""
    section = (REPO_ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1)
    return command.replace("scripts/setup.sh && ", "").replace(".venv/bin/", f"{Path(sys.executable).parent}/")


@pytest.mark.slow
def test_readme_first_command_with_a_fresh_output_root(tmp_path):
    work = tmp_path / "work"  # datasets/ and outputs/ are relative to the working directory
    shutil.copytree(REPO_ROOT / "recipes", work / "recipes")
    env = {**os.environ, "IMAGINAIRE_OUTPUT_ROOT": str(tmp_path / "root")}
    done = subprocess.run(["bash", "-c", quick_start_command()], cwd=work, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "outputs" / "tiny_infer" / "tiny_robot.mp4").is_file()
    assert (tmp_path / "root" / "cosmos_predict_v2p5" / "tiny" / "tiny_posttrain" / "checkpoints").is_dir()
