"""Loads the compiled library `_C` and says what it contains.

`_C` is a plain shared library (it links torch, not libpython): `torch.ops.load_library` runs its static
registrations, after which the ops are `torch.ops.cosmos_engine.<name>`. A build made against another
torch is refused, because a C++ ABI mismatch would crash or silently misbehave. When the library is
absent (a source checkout that was never built), the ops fall back to the PyTorch reference and
`build_info()["loaded"]` is False; `cosmos-engine info` says so.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import torch

from cosmos_engine.errors import BuildError

log = logging.getLogger(__name__)

# Set to 1 to skip loading _C (pure-reference mode, e.g. to bisect a kernel problem).
_SKIP_ENV = "COSMOS_ENGINE_SKIP_EXTENSION"


def _library_path() -> Path | None:
    spec = importlib.util.find_spec("cosmos_engine._C")
    if spec is not None and spec.origin:
        return Path(spec.origin)
    candidate = Path(__file__).resolve().parent.parent / "_C.so"
    return candidate if candidate.exists() else None


def _load() -> dict:
    """Load _C; return its build description (with 'loaded' and, if not loaded, 'why')."""
    if os.environ.get(_SKIP_ENV, "0") not in ("", "0"):
        return {"loaded": False, "why": f"{_SKIP_ENV} is set"}
    path = _library_path()
    if path is None:
        return {"loaded": False, "why": "the compiled library _C was not found (pip install --no-build-isolation -e .)"}
    torch.ops.load_library(str(path))
    info = json.loads(torch.ops.cosmos_engine.build_info())
    if info["torch_version"] != torch.__version__:
        raise BuildError(
            f"{path} was built against torch {info['torch_version']} but torch {torch.__version__} is "
            "running; rebuild with: pip install --no-build-isolation -e ."
        )
    info.update(loaded=True, path=str(path))
    return info


# Loaded once at import, so that code traced by torch.compile only reads a constant.
_INFO = _load()


def _kernel_table() -> dict[str, dict[str, bool]]:
    """For every op of the namespace, whether a CPU and a CUDA kernel are registered."""
    table = {}
    for qualname in torch._C._dispatch_get_all_op_names():
        if not qualname.startswith("cosmos_engine::") or qualname.endswith("build_info"):
            continue
        table[qualname.split("::", 1)[1]] = {
            key.lower(): torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)
            for key in ("CPU", "CUDA")
        }
    return dict(sorted(table.items()))


def build_info() -> dict:
    """What was built: torch version built against, CUDA on/off and why, archs, ops with CPU/CUDA kernels."""
    info = dict(_INFO)
    info["ops"] = _kernel_table() if info["loaded"] else {}
    return info


def is_loaded() -> bool:
    return _INFO["loaded"]


def has_cuda_kernels() -> bool:
    """True when _C holds CUDA kernels (whether a GPU is present is a separate question)."""
    return bool(_INFO["loaded"] and _INFO["cuda"])


def _arch(name: str) -> tuple[int, int, str]:
    """'sm_90a' -> (9, 0, 'a'), 'compute_120' -> (12, 0, '')."""
    match = re.fullmatch(r"(?:sm|compute)_(\d+)(\d)([af]?)", name)
    if match is None:
        raise ValueError(f"not a CUDA arch name such as sm_90a or compute_120: {name!r}")
    return int(match.group(1)), int(match.group(2)), match.group(3)


def cuda_kernel_image(capability: tuple[int, int]) -> str | None:
    """The cubin or PTX of _C that a GPU of compute capability `capability` runs, or None if it has none.

    A cubin sm_XY runs on X.Y and the later minors of major X (sm_XYa only on X.Y, sm_XYf on the X
    family); PTX compute_XY is JIT-compiled for X.Y and every later GPU (compute_XYa only for X.Y)."""
    if not has_cuda_kernels():
        return None
    major, minor = capability
    cubins = []  # (minor, name) of every cubin that runs here; the driver takes the closest, as we report
    for name in filter(None, _INFO.get("cuda_cubins", "").split(",")):
        arch_major, arch_minor, suffix = _arch(name)
        if arch_major == major and (arch_minor == minor or (suffix != "a" and arch_minor < minor)):
            cubins.append((arch_minor, name))
    if cubins:
        return max(cubins)[1]
    for name in filter(None, _INFO.get("cuda_ptx", "").split(",")):
        arch_major, arch_minor, suffix = _arch(name)
        fits = {"a": (major, minor) == (arch_major, arch_minor), "f": major == arch_major and minor >= arch_minor}
        if fits.get(suffix, (major, minor) >= (arch_major, arch_minor)):
            return f"{name} (PTX, JIT-compiled)"
    return None


def cuda_archs_summary() -> str:
    """The archs _C was built for, in one line: "8.0,9.0a,12.0+PTX (cubins sm_80,sm_90a,sm_120; PTX compute_120)"."""
    return (f"{_INFO.get('cuda_archs') or 'no archs'} (cubins {_INFO.get('cuda_cubins') or 'none'}; "
            f"PTX {_INFO.get('cuda_ptx') or 'none'})")
