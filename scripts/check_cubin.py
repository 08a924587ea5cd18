"""Static checks of the compiled CUDA code (CI has no GPU, so this is how sm_90a code is checked).

1. `_C` holds an sm_90a ELF (cubin) for every CUDA source.
2. No kernel uses local memory (LOCAL:0 in `cuobjdump -res-usage`): local memory here means register
   spills or stack arrays, both of which cost bandwidth in memory-bound kernels.
cuobjdump comes from $CUOBJDUMP, the CUDA toolkit on PATH, or the copy inside Triton's wheel.

    python scripts/check_cubin.py [path/to/_C.so]
"""

from __future__ import annotations

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


def main() -> int:
    if len(sys.argv) > 1:
        lib = Path(sys.argv[1])
    else:
        import cosmos_engine

        info = cosmos_engine.build_info()
        if not info["loaded"] or not info["cuda"]:
            print(f"check_cubin: FAIL: the installed _C has no CUDA kernels ({info.get('cuda_reason') or info.get('why')})")
            return 1
        lib = Path(info["path"])
    cuobjdump = find_cuobjdump()
    elves = subprocess.run([cuobjdump, "--list-elf", str(lib)], capture_output=True, text=True, check=True).stdout
    cubins = re.findall(r"ELF file\s+\d+:\s+(\S+)", elves)
    usage = subprocess.run([cuobjdump, "-res-usage", str(lib)], capture_output=True, text=True, check=True).stdout
    kernels = re.findall(r"Function (\S+):\s*\n\s*(REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:\d+)", usage)
    failures = []
    if not any(name.endswith(".sm_90a.cubin") for name in cubins):
        failures.append(f"no sm_90a cubin in {lib} (found: {cubins or 'none'})")
    if not kernels:
        failures.append("cuobjdump -res-usage listed no kernels")
    for name, res in kernels:
        local = int(re.search(r"LOCAL:(\d+)", res).group(1))
        if local:
            failures.append(f"{name} uses {local} bytes of local memory (spills): {res}")
    print(f"check_cubin: {lib}")
    print(f"  cubins:  {', '.join(cubins)}")
    max_registers = max((int(re.search(r"REG:(\d+)", res).group(1)) for _, res in kernels), default=0)
    print(f"  kernels: {len(kernels)}, max registers {max_registers}")
    for f in failures:
        print(f"  FAIL: {f}")
    print("check_cubin: " + ("FAIL" if failures else "OK (sm_90a present, no local memory)"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
