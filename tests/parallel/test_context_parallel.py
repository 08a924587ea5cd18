"""Context parallelism (Ulysses) for sampling: 2 gloo ranks split the latent frames of one forward and
give what one process gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("cp_worker.py")


def test_two_ranks_split_frames_and_match_one_process(tmp_path):
    out = tmp_path / "cp.pt"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
                             str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    # Per-frame timesteps (each rank keeps its frames' modulation) and a shared timestep; a condition frame.
    torch.testing.assert_close(got["split"], got["whole"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["shared"], got["shared_whole"], atol=1e-5, rtol=1e-5)
    assert got["whole"].abs().max() > 0.1  # a real output, not zeros
    assert "sampling only" in got["errors"]["grad"]
    assert "divisible by 2, got 3" in got["errors"]["frames"]


def test_exchanges_invert_each_other_in_one_process():
    """tokens_to_heads / heads_to_tokens on a group of one are reshapes that undo each other."""
    import torch.distributed as dist

    from cosmos_engine.parallel import context_parallel

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        x = torch.randn(2, 12, 4, 8)
        heads = context_parallel.tokens_to_heads(x, dist.group.WORLD)
        assert torch.equal(heads, x)
        assert torch.equal(context_parallel.heads_to_tokens(heads, dist.group.WORLD), x)
        assert context_parallel.frame_range(6, dist.group.WORLD) == (0, 6)
    finally:
        dist.destroy_process_group()
