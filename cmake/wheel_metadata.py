"""scikit-build-core metadata provider: the package's dependencies, with torch pinned to the one that builds.

`_C` is compiled against one torch's C++ ABI and refuses to load under any other, so the wheel must say
which torch it needs: exactly the distribution version of the torch in the building interpreter (pip
matches that; torch.__version__ may carry a local label such as +cu130 that the metadata lacks).
Configured in pyproject.toml under [tool.scikit-build.metadata.dependencies].
"""

from __future__ import annotations

import importlib.metadata


def dynamic_metadata(field: str, settings: dict) -> list[str]:
    if field != "dependencies":
        raise ValueError(f"wheel_metadata provides 'dependencies' only, not {field!r}")
    others = list(settings.get("others", []))
    if any(dep.split(";")[0].strip().lower().startswith("torch") for dep in others):
        raise ValueError("wheel_metadata: list torch nowhere in 'others'; it is pinned to the building torch")
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("wheel_metadata: torch is not installed in the interpreter that builds "
                           "(build with pip's --no-build-isolation against the torch you will run)") from None
    return [f"torch=={torch_version}", *others]
