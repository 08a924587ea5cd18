"""Atomic file writes, the one way cosmos-engine writes a file a crash must not leave half-written.

The content goes to a temporary name in the target's folder, is flushed to disk, and is then renamed over
the target (`os.replace` is atomic within a filesystem): a reader sees the old file or the new one, never a
mix, and a crash leaves at most a stray `.<name>.*.tmp` file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an unused temporary path beside `path` for the caller to create; when the block succeeds the file
    is synced and renamed to `path`, when it fails the temporary file is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
