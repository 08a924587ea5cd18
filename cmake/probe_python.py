"""Print, as CMake `set()` lines, everything the build needs to know about the Python environment.

CMake never hard-codes a path: torch, the NVIDIA wheels, CUTLASS and nvcc are all located from here.
Run by cmake/torch.cmake with the interpreter that will import the package.
"""

import glob
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys

from packaging.requirements import Requirement

import torch

logging.disable(logging.WARNING)  # cpp_extension warns at import about CUDA_HOME; we find nvcc ourselves
import torch.utils.cpp_extension as cpp_ext  # noqa: E402


def cmake_set(name: str, value) -> None:
    if isinstance(value, bool):
        value = "ON" if value else "OFF"
    if isinstance(value, (list, tuple)):
        value = ";".join(str(v) for v in value)
    text = str(value).replace("\\", "/").replace('"', '\\"')
    print(f'set({name} "{text}")')


def nvidia_wheel_dirs() -> tuple[list[str], list[str]]:
    """Include and lib folders of the nvidia-* wheels torch's CUDA build requires (cu13 or per-package).

    Only torch's own requirements: other nvidia wheels (DALI's, installed after the editable build) would
    change every compile line, and with it rebuild everything when the wheel is built later."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return [], []
    wanted: set[str] = set()  # nvidia/<sub> folders of torch's requirements, followed with their extras
    todo, seen = [("torch", frozenset())], set()
    while todo:
        dist, extras = todo.pop()
        if (dist, extras) in seen:
            continue
        seen.add((dist, extras))
        try:
            files, requires = importlib.metadata.files(dist) or [], importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement this platform does not install
        wanted |= {f.parts[1] for f in files if len(f.parts) > 2 and f.parts[0] == "nvidia"}
        for text in requires:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                if req.name.startswith(("nvidia-", "cuda-")):
                    todo.append((req.name, frozenset(req.extras)))
    includes, libs = [], []
    for root in spec.submodule_search_locations:
        for sub in sorted(wanted):
            if os.path.isdir(os.path.join(root, sub, "include")):
                includes.append(os.path.join(root, sub, "include"))
            if os.path.isdir(os.path.join(root, sub, "lib")):
                libs.append(os.path.join(root, sub, "lib"))
    return includes, libs


def find_nvcc() -> tuple[str, str, str]:
    """(nvcc path, toolkit root, why-not) — the toolkit root is asked from nvcc itself, so that a
    wrapper script such as /usr/local/bin/nvcc still leads to the real toolkit."""
    candidates = [os.environ.get("CUDACXX")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates.append(shutil.which("nvcc"))
    for nvcc in filter(None, candidates):
        if not (os.path.isfile(nvcc) and os.access(nvcc, os.X_OK)):
            continue
        try:
            dry = subprocess.run(
                [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                capture_output=True, text=True, timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return "", "", f"{nvcc} could not be run ({exc})"
        match = re.search(r"^#\$ TOP=(.*)$", dry.stdout + dry.stderr, re.MULTILINE)
        root = os.path.realpath(match.group(1)) if match else os.path.dirname(os.path.dirname(nvcc))
        real_nvcc = os.path.join(root, "bin", "nvcc")
        return (real_nvcc if os.path.isfile(real_nvcc) else nvcc), root, ""
    return "", "", "no nvcc found (looked at $CUDACXX, $CUDA_HOME, $CUDA_PATH and PATH)"


def cutlass_include() -> str:
    # find_spec without importing: the wheel's Python deps are not needed for its headers.
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = os.path.join(list(spec.submodule_search_locations)[0], "source", "include")
    return path if os.path.isdir(os.path.join(path, "cute")) else ""


def main() -> None:
    torch_dir = os.path.dirname(torch.__file__)
    cmake_set("COSMOS_PYTHON_VERSION", sys.version.split()[0])
    cmake_set("COSMOS_TORCH_VERSION", torch.__version__)
    cmake_set("COSMOS_TORCH_DIR", torch_dir)
    cmake_set("COSMOS_TORCH_INCLUDE_DIRS", [
        os.path.join(torch_dir, "include"),
        os.path.join(torch_dir, "include", "torch", "csrc", "api", "include"),
    ])
    cmake_set("COSMOS_TORCH_LIB_DIR", os.path.join(torch_dir, "lib"))
    cmake_set("COSMOS_TORCH_CXX11_ABI", int(torch._C._GLIBCXX_USE_CXX11_ABI))
    cmake_set("COSMOS_TORCH_CUDA_VERSION", torch.version.cuda or "")
    includes, libs = nvidia_wheel_dirs()
    cmake_set("COSMOS_NVIDIA_WHEEL_INCLUDE_DIRS", includes)
    cmake_set("COSMOS_NVIDIA_WHEEL_LIB_DIRS", libs)
    nvrtc = sorted(p for d in libs for p in glob.glob(os.path.join(d, "libnvrtc.so*"))
                   if "builtins" not in p and "alt" not in p)
    cmake_set("COSMOS_NVRTC_LIBRARY", nvrtc[0] if nvrtc else "")
    nvcc, toolkit_root, nvcc_why = find_nvcc()
    cmake_set("COSMOS_NVCC", nvcc)
    cmake_set("COSMOS_CUDA_TOOLKIT_ROOT", toolkit_root)
    cmake_set("COSMOS_NVCC_WHY_NOT", nvcc_why)
    cmake_set("COSMOS_CUTLASS_INCLUDE_DIR", cutlass_include())
    cmake_set("COSMOS_TORCH_NVCC_FLAGS", getattr(cpp_ext, "COMMON_NVCC_FLAGS", []))


if __name__ == "__main__":
    main()
