"""Context parallelism (Ulysses) for sampling: 2 gloo ranks split the latent frames of one forward and
give what one process gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("cp_worker.py")


def run_worker(ranks: int, what: str, out: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             str(ranks), str(WORKER), what, str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_exchanges_on_three_ranks_move_heads_and_tokens_to_the_right_place(tmp_path):
    """3 ranks, 2 heads each: rank j gets heads [2j, 2j + 2) of every token, and the inverse restores its tokens."""
    run_worker(3, "exchanges", tmp_path / "x.pt")
    assert torch.load(tmp_path / "x.pt", weights_only=True)["ok"] == [True, True, True]


def test_two_ranks_split_frames_and_match_one_process(tmp_path):
    out = tmp_path / "cp.pt"
    run_worker(2, "dit", out)
    got = torch.load(out, weights_only=True)
    # Per-frame timesteps (each rank keeps its frames' modulation) and a shared timestep; a condition frame.
    torch.testing.assert_close(got["split"], got["whole"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["shared"], got["shared_whole"], atol=1e-5, rtol=1e-5)
    assert got["whole"].abs().max() > 0.1  # a real output, not zeros
    assert "sampling only" in got["errors"]["grad"]
    assert "divisible by 2, got 3" in got["errors"]["frames"]
