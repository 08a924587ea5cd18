"""One cache entry file, as both caches (latents, text embeddings) store it: a safetensors file holding one
tensor named "tensor", with the entry's full key as its metadata, written atomically. safetensors holds no
pickle, so reading an entry never runs code."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cosmos_engine.atomic import atomic_path


def non_finite(tensor: torch.Tensor) -> int:
    """How many of the values are NaN or Inf. A finite sum proves there are none, and one pass of a sum is
    several times cheaper than `isfinite` (bf16 especially: a 100 MB caption embedding is read at every
    step); only a non-finite sum (a NaN, an Inf, or an overflow of huge values) is counted exactly."""
    if torch.isfinite(tensor.sum(dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32)):
        return 0
    return tensor.numel() - int(torch.isfinite(tensor).sum())


def read_entry(path: Path, metadata: dict[str, str], *, values: bool) -> tuple[torch.Tensor | None, str | None]:
    """(the tensor when `values`, else None; None) when `path` is an entry written for exactly `metadata`,
    (None, why not) otherwise: "missing", or a reason to warn about. The header is read first, so without
    `values` nothing else is; with them, NaN or Inf values make the entry unusable. One open of the file."""
    if not path.exists():
        return None, "missing"
    if not path.is_file():
        return None, "a folder, not a file"
    try:
        with safe_open(str(path), framework="pt") as f:
            found, names = f.metadata(), list(f.keys())
            if found != metadata:
                return None, f"written for another key ({found})"
            if names != ["tensor"]:
                return None, f"holds tensors {names}, expected one named 'tensor'"
            if not values:
                return None, None
            tensor = f.get_tensor("tensor")
    except (SafetensorError, OSError) as exc:
        return None, f"unreadable ({exc})"
    bad = non_finite(tensor)
    if bad:
        return None, f"poisoned: {bad} of its {tensor.numel()} values are NaN or Inf"
    return tensor, None


def write_entry(path: Path, tensor: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write the entry atomically (replacing a folder that would make the rename fail)."""
    if path.is_dir():
        shutil.rmtree(path)
    with atomic_path(path) as tmp:
        save_file({"tensor": tensor.detach().contiguous().cpu()}, str(tmp), metadata=metadata)
