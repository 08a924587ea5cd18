"""Atomic file writes, the one way cosmos-engine writes a file a crash must not leave half-written.

The content goes to a temporary name in the target's folder, is flushed to disk, and is then renamed over
the target (`os.replace` is atomic within a filesystem): a reader sees the old file or the new one, never a
mix, and a crash leaves at most a stray `.<name>.*.tmp` file (`remove_stale_temporaries` clears those of
dead processes). A write that fails for want of space raises `DiskFull`, one line naming the file.
`unwritable_reason` checks an output folder before a job starts writing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from cosmos_engine.errors import UserError

log = logging.getLogger(__name__)

class DiskFull(UserError):
    """The file system ran out of space during a write."""


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{12}\.tmp$")  # what atomic_path names: .<name>.<pid>.<hex>.tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an unused temporary path beside `path` for the caller to create; when the block succeeds the file
    is synced and renamed to `path`, when it fails the temporary file is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")  # see _TEMPORARY
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        # Judged before the temporary file goes: deleting it gives back the space that ran out.
        full = isinstance(exc, (OSError, RuntimeError)) and disk_full([exc], path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFull(f"no space left on device while writing {path}") from None
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def disk_full(errors: Iterable[BaseException], folder: str | os.PathLike) -> bool:
    """Whether these errors (and the errors they were raised from) mean the disk holding `folder` is full (or
    the user's quota is). torch's zip writer reports a full disk as an opaque RuntimeError ("enforce fail at
    inline_container.cc"), so such an error with almost no space left in `folder` counts too."""
    opaque = False
    for error in errors:
        while error is not None:
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                return True
            if "No space left" in str(error):
                return True
            opaque |= isinstance(error, RuntimeError)
            error = error.__cause__ or error.__context__
    try:
        return opaque and shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def unwritable_reason(folder: str | os.PathLike) -> str | None:
    """Why `folder` cannot be created or written into (a file in the way, no write permission), or None.
    Jobs call it before their work, so that a bad output location fails at once, not at the first write."""
    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    return None


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files that killed writers left in `folder` (those of processes no longer alive on
    this host; a live writer's file is left alone) and return how many were removed."""
    removed = 0
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else ():
        match = _TEMPORARY.match(entry.name)
        if match and entry.is_file() and not process_alive(int(match.group(1))):
            log.info("removing %s, left by an interrupted write", entry)
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
