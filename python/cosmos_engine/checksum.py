"""`<file>.sha256` sidecars in the `sha256sum` format (`<hex>  <name>`), beside the files `convert` writes.

Readers verify a file against its sidecar when there is one; official files have none and are read
unchecked. A sidecar is removed before its file is replaced and written only once the new file is in
place, so a file is never paired with another file's digest (`sha256sum -c model.pt.sha256` works too).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cosmos_engine.atomic import atomic_write
from cosmos_engine.errors import CheckpointError

SUFFIX = ".sha256"
CHUNK_BYTES = 8 << 20  # the 2B files are 4-8 GB: stream them
_DIGEST = re.compile(r"[0-9a-f]{64}")


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_sidecar(path: Path, digest: str) -> Path:
    sidecar = sidecar_path(path)
    atomic_write(sidecar, f"{digest}  {path.name}\n")
    return sidecar


def recorded_sha256(path: Path) -> str | None:
    """The digest `path`'s sidecar records, None without a sidecar; CheckpointError naming an unreadable one."""
    sidecar = sidecar_path(path)
    expected = f"expected '<64 hex digits>  {path.name}', or delete it to read {path.name} unchecked"
    try:
        fields = sidecar.read_bytes().decode("ascii").split()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{sidecar}: unreadable checksum file ({exc.strerror}); {expected}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{sidecar}: garbled checksum file (not ASCII text); {expected}") from None
    if not fields or not _DIGEST.fullmatch(fields[0].lower()):
        raise CheckpointError(f"{sidecar}: garbled checksum file (no sha256 digest first); {expected}")
    return fields[0].lower()


def verify_sha256(path: Path) -> None:
    """CheckpointError naming the file and both digests when `path` differs from what its sidecar records."""
    expected = recorded_sha256(path)
    if expected is None:
        return
    found = file_sha256(path)
    if found != expected:
        raise CheckpointError(f"{path}: sha256 mismatch: {sidecar_path(path).name} records {expected}, the file has "
                              f"{found}; the file is damaged or was changed after conversion (convert again)")
