"""Which implementation an op runs: the CUDA kernel, the CPU kernel, or the PyTorch reference.

By default the device of the inputs decides (CUDA kernel for CUDA tensors when _C has CUDA kernels, CPU
kernel for CPU tensors when _C is loaded, the reference otherwise). `force_backend(...)` overrides that
for every op inside a `with` block, so a test can run the same model on both paths and compare.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

import torch

from cosmos_engine.ops import _library

log = logging.getLogger(__name__)

Backend = Literal["reference", "cpu", "cuda"]
BACKENDS: tuple[Backend, ...] = ("reference", "cpu", "cuda")

# A plain module global (not a ContextVar) so torch.compile can read it while tracing.
_forced: Backend | None = None
_warned_reference = False


@contextlib.contextmanager
def force_backend(backend: Backend) -> Iterator[None]:
    """Run every op in the block with `backend` ("reference", "cpu" or "cuda")."""
    if backend not in BACKENDS:
        raise ValueError(f"force_backend: backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "reference" and not _library.is_loaded():
        raise RuntimeError(f"force_backend({backend!r}): the compiled library is not loaded ({_library.build_info()['why']})")
    if backend == "cuda" and not _library.has_cuda_kernels():
        raise RuntimeError("force_backend('cuda'): this build has no CUDA kernels "
                           f"({_library.build_info()['cuda_reason']})")
    global _forced
    previous, _forced = _forced, backend
    try:
        yield
    finally:
        _forced = previous


def forced_backend() -> Backend | None:
    return _forced


def select(device: torch.device) -> Backend:
    """The backend an op should use for tensors on `device`."""
    forced = _forced
    if forced is not None:
        if forced != "reference" and forced != device.type:
            raise RuntimeError(f"backend {forced!r} is forced but the inputs are on {device}")
        return forced
    if device.type == "cuda" and _library.has_cuda_kernels():
        return "cuda"
    if device.type == "cpu" and _library.is_loaded():
        return "cpu"
    global _warned_reference
    if not _warned_reference:
        _warned_reference = True
        log.warning("no compiled kernel for %s tensors (%s); using the PyTorch reference ops",
                    device.type, _library.build_info().get("why") or _library.build_info().get("cuda_reason"))
    return "reference"
