"""DCP checkpoints: official layout, atomic publication, pruning, and never loading a partial save."""

from __future__ import annotations

import shutil

import pytest
import torch

from cosmos_engine.errors import CheckpointError
from cosmos_engine.train.checkpoint import LATEST, PARTS, CheckpointManager, checkpoint_problem


def make_state(seed: int) -> dict[str, dict]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "model": {"net.w": torch.randn(4, 3, generator=gen), "net_ema.w": torch.randn(4, 3, generator=gen)},
        "optim": {"state.net.w.exp_avg": torch.randn(4, 3, generator=gen)},
        "scheduler": {"last_epoch": seed},
        "trainer": {"iteration": seed, "rng": torch.Generator().manual_seed(seed).get_state()},
    }


def empty_like_state(state):
    return {part: {k: torch.zeros_like(v) if torch.is_tensor(v) else 0 for k, v in d.items()} for part, d in state.items()}


def test_layout_round_trip_and_pruning(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    for it in (200, 400, 600):
        folder = manager.save(it, make_state(it))
        assert folder.name == f"iter_{it:09d}" and checkpoint_problem(folder) is None
        assert sorted(p.name for p in folder.iterdir()) == sorted(PARTS)
        assert (tmp_path / "checkpoints" / LATEST).read_text() == f"iter_{it:09d}\n"
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_000000400", "iter_000000600", LATEST]
    assert manager.latest().name == "iter_000000600"
    loaded = empty_like_state(make_state(600))
    manager.load(manager.latest(), loaded)
    want = make_state(600)
    for part in ("model", "optim"):
        for k in want[part]:
            assert torch.equal(loaded[part][k], want[part][k])
    assert loaded["trainer"]["iteration"] == 600 and loaded["scheduler"]["last_epoch"] == 600
    assert torch.equal(loaded["trainer"]["rng"], want["trainer"]["rng"])


def test_interrupted_saves_are_never_loaded(tmp_path):
    manager = CheckpointManager(tmp_path / "ck", keep_last=3)
    manager.save(10, make_state(10))
    good = manager.save(20, make_state(20))
    # A save that died before the rename: a .tmp folder with full content.
    shutil.copytree(good, tmp_path / "ck" / "iter_000000030.tmp")
    # A folder that lost a part's metadata (e.g. copied by hand, or a truncated disk).
    broken = tmp_path / "ck" / "iter_000000040"
    shutil.copytree(good, broken)
    (broken / "optim" / ".metadata").unlink()
    assert manager.latest() == good
    with pytest.raises(CheckpointError, match="iter_000000040: not a complete checkpoint"):
        manager.load(broken, empty_like_state(make_state(40)))
    # The next save clears the leftovers of the interrupted one.
    manager.save(50, make_state(50))
    assert not (tmp_path / "ck" / "iter_000000030.tmp").exists()


def test_saving_the_same_iteration_again_replaces_it(tmp_path):
    manager = CheckpointManager(tmp_path / "ck", keep_last=2)
    manager.save(5, make_state(1))
    manager.save(5, make_state(2))
    loaded = empty_like_state(make_state(2))
    manager.load(manager.latest(), loaded)
    assert torch.equal(loaded["model"]["net.w"], make_state(2)["model"]["net.w"])
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["iter_000000005", LATEST]


def test_a_kill_while_replacing_a_checkpoint_keeps_the_old_one(tmp_path):
    """Saving an iteration again moves the published folder to .old, then publishes the new one; killed in
    between, the next start puts the old one back instead of deleting both."""
    manager = CheckpointManager(tmp_path / "ck", keep_last=2)
    folder = manager.save(5, make_state(5))
    folder.rename(folder.with_name(folder.name + ".old"))
    shutil.copytree(folder.with_name(folder.name + ".old"), folder.with_name(folder.name + ".tmp"))
    manager.remove_leftovers()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["iter_000000005", LATEST]
    loaded = empty_like_state(make_state(5))
    manager.load(manager.latest(), loaded)
    assert torch.equal(loaded["model"]["net.w"], make_state(5)["model"]["net.w"])
