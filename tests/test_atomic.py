"""Atomic writes: all or nothing, a full disk named in one line, leftovers of dead writers cleared."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from cosmos_engine.atomic import DiskFull, atomic_path, atomic_write, remove_stale_temporaries


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write(target, "old")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError("writer failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")],
                         ids=["ENOSPC", "torch zip writer"])
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, error):
    from cosmos_engine import atomic

    if isinstance(error, RuntimeError):  # torch's writer says nothing about space: the free space decides
        monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _: type("usage", (), {"free": 4096})())
    with pytest.raises(DiskFull, match=f"no space left on device while writing {tmp_path / 'model.pt'}$"):
        with atomic_path(tmp_path / "model.pt"):
            raise error
    assert not list(tmp_path.iterdir())


def test_an_unrelated_runtime_error_is_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="bug"), atomic_path(tmp_path / "x"):
        raise RuntimeError("bug")


def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".a.txt.{dead.pid}.0123456789ab.tmp"
    live = tmp_path / f".b.txt.{os.getpid()}.0123456789ab.tmp"
    other = tmp_path / ".c.tmp"  # not a name atomic_path makes
    for path in (stale, live, other):
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and live.exists() and other.exists()
