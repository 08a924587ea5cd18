"""Atomic writes: all or nothing, a full disk named in one line, leftovers of dead writers cleared."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from cosmos_engine.atomic import DiskFull, atomic_path, atomic_write, remove_stale_temporaries, unwritable_reason


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

    def disk_usage(_):  # the partial file fills the disk; deleting it gives the space back
        full = any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
        return type("usage", (), {"free": 4096 if full else 1 << 30})()

    if isinstance(error, RuntimeError):  # torch's writer says nothing about space: the free space decides
        monkeypatch.setattr(atomic.shutil, "disk_usage", disk_usage)
    with pytest.raises(DiskFull, match=f"no space left on device while writing {tmp_path / 'model.pt'}$"):
        with atomic_path(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"part of a large file")
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


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits; the case cannot be made here")
def test_a_folder_without_write_permission_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert unwritable_reason(locked / "out") == f"no permission to write in {locked}"


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    assert unwritable_reason(tmp_path / "f" / "out") == f"{tmp_path / 'f'} is a file, not a folder"
