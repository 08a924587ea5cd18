"""Static checks of the compiled CUDA code, for every arch the build lists (CI has no GPU; this is the check).

1. `_C` holds a cubin for every CUDA source and every arch of build_info's `cuda_cubins`, and the PTX of
   every entry of `cuda_ptx`: what the run-time arch check (cosmos_engine.ops._library) promises is there.
2. Every arch holds the same kernels, and none uses local memory (LOCAL:0 in `cuobjdump -res-usage`): local
   memory here means register spills or stack arrays, both of which cost bandwidth in memory-bound kernels.
cuobjdump comes from $CUOBJDUMP, the CUDA toolkit on PATH, or the copy inside Triton's wheel.

    python scripts/check_cubin.py            # the _C that `import cosmos_engine` loads
    python scripts/check_cubin.py path/_C.so # another build against the same torch (e.g. inside a wheel)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def find_cuobjdump() -> str:
    candidates = [os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump")]
    try:
        import triton

        candidates.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    sys.exit("check_cubin: no cuobjdump found (set CUOBJDUMP, install the CUDA toolkit, or install triton)")


def library_and_info(argv: list[str]) -> tuple[Path, dict]:
    """The library to check and its build_info (loaded from that very file)."""
    if argv:
        import torch

        lib = Path(argv[0])
        torch.ops.load_library(str(lib))
        return lib, json.loads(torch.ops.cosmos_engine.build_info())
    import cosmos_engine

    info = cosmos_engine.build_info()
    if not info["loaded"]:
        sys.exit(f"check_cubin: FAIL: _C is not loaded ({info['why']})")
    return Path(info["path"]), info


def kernels_per_arch(res_usage: str) -> dict[str, dict[str, str]]:
    """{arch: {kernel: "REG:.. STACK:.. SHARED:.. LOCAL:.."}} from `cuobjdump -res-usage` (ELF sections only)."""
    per_arch: dict[str, dict[str, str]] = {}
    for section in re.split(r"\n(?=Fatbin (?:elf|ptx) code:)", res_usage):
        if not section.startswith("Fatbin elf code:"):
            continue
        arch = re.search(r"^arch = (\S+)", section, re.M).group(1)
        kernels = per_arch.setdefault(arch, {})
        for name, res in re.findall(r"Function (\S+):\s*\n\s*(REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:\d+)", section):
            kernels[name] = res
    return per_arch


def main() -> int:
    lib, info = library_and_info(sys.argv[1:])
    if not info["cuda"]:
        print(f"check_cubin: FAIL: {lib} has no CUDA kernels ({info['cuda_reason']})")
        return 1
    cuobjdump = find_cuobjdump()

    def dump(*flags: str) -> str:
        return subprocess.run([cuobjdump, *flags, str(lib)], capture_output=True, text=True, check=True).stdout

    cubins = re.findall(r"ELF file\s+\d+:\s+(\S+)\.(sm_\w+)\.cubin", dump("--list-elf"))
    ptx = re.findall(r"PTX file\s+\d+:\s+(\S+)\.(sm_\w+)\.ptx", dump("--list-ptx"))
    per_arch = kernels_per_arch(dump("-res-usage"))
    want_cubins = [a for a in info.get("cuda_cubins", "").split(",") if a]
    want_ptx = [a.replace("compute_", "sm_") for a in info.get("cuda_ptx", "").split(",") if a]
    sources = sorted({src for src, _ in cubins})

    failures = []
    if not want_cubins:
        failures.append("build_info lists no cubins (cuda_cubins is empty)")
    for arch in want_cubins:
        missing = [s for s in sources if (s, arch) not in cubins]
        if not any(a == arch for _, a in cubins) or missing:
            failures.append(f"no {arch} cubin for {', '.join(missing) or 'any source'}")
    for arch in want_ptx:
        missing = [s for s in sources if (s, arch) not in ptx]
        if not any(a == arch for _, a in ptx) or missing:
            failures.append(f"no {arch.replace('sm_', 'compute_')} PTX for {', '.join(missing) or 'any source'}")
    unlisted = sorted({a for _, a in cubins} - set(want_cubins))
    if unlisted:
        failures.append(f"cubins for {', '.join(unlisted)} that build_info does not list (the run-time check would "
                        "not know them)")
    all_kernels = set().union(*(set(k) for k in per_arch.values())) if per_arch else set()
    if not all_kernels:
        failures.append("cuobjdump -res-usage listed no kernels")
    for arch, kernels in sorted(per_arch.items()):
        if set(kernels) != all_kernels:
            failures.append(f"{arch} lacks {len(all_kernels - set(kernels))} of the {len(all_kernels)} kernels")
        for name, res in kernels.items():
            local = int(re.search(r"LOCAL:(\d+)", res).group(1))
            if local:
                failures.append(f"{arch} {name} uses {local} bytes of local memory (spills): {res}")

    print(f"check_cubin: {lib}")
    print(f"  archs:   {info['cuda_archs']} ({len(sources)} CUDA sources)")
    for arch, kernels in sorted(per_arch.items()):
        registers = max((int(re.search(r"REG:(\d+)", r).group(1)) for r in kernels.values()), default=0)
        print(f"  {arch:<8} {len(kernels)} kernels, max registers {registers}")
    print(f"  PTX:     {', '.join(sorted({a.replace('sm_', 'compute_') for _, a in ptx})) or 'none'}")
    for f in failures:
        print(f"  FAIL: {f}")
    print("check_cubin: " + ("FAIL" if failures else f"OK ({len(want_cubins)} archs present, same kernels, no local memory)"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
