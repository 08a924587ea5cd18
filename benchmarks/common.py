"""Shared benchmark machinery: timing, the machine's copy bandwidth, and result files.

CPU timing: `time.perf_counter` around the call after warm-up, the median of the repetitions.
GPU timing: CUDA events, with an L2 flush (a 256 MB write) between repetitions, the median.
Every run writes benchmarks/results/<YYYYMMDD>_<device>_<name>.json holding the machine, versions,
commit, exact command and raw timings, and prints a summary table last. Benchmarks never assert speed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# glibc returns every allocation above its mmap threshold (at most 32 MB) to the kernel on free, so each
# large op output is page-faulted in anew: at 100+ MB per tensor that costs more than the op itself and
# hides what the kernels do. Benchmarks run with the threshold raised so freed blocks are reused (as
# PyTorch's CUDA caching allocator does on the GPU); every provider benefits equally and the results
# record the setting.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def reexec_with_malloc_tuning() -> None:
    """Restart this process once with MALLOC_ENV set (glibc reads it only at start-up).
    Set COSMOS_BENCH_DEFAULT_MALLOC=1 to measure with the default allocator behaviour instead."""
    if os.environ.get("COSMOS_BENCH_DEFAULT_MALLOC") == "1" or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 3, reps: int = 10,
            min_cpu_reps: int = 10) -> list[float]:
    """Seconds per call, one entry per repetition (at least `min_cpu_reps` on the CPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.type == "cuda":
        flush = torch.empty(64 * 2**20, dtype=torch.float32, device=device)
        for _ in range(reps):
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return times
    for _ in range(max(reps, min_cpu_reps)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def copy_bandwidth(device: torch.device, megabytes: int = 256) -> float:
    """Bytes/s of `dst.copy_(src)` (read + write counted) for a buffer of `megabytes`, the ceiling for
    memory-bound ops, measured in the same process as the op it is compared with."""
    n = megabytes * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    seconds = median(time_fn(lambda: dst.copy_(src), device, warmup=2, reps=10))
    return 2 * src.numel() * 4 / seconds


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(device: torch.device) -> dict:
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "cpu_model": _cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
    }
    if device.type == "cuda":
        info["driver"] = torch.cuda.get_device_properties(device).name
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_result(name: str, device: torch.device, payload: dict) -> Path:
    """Write benchmarks/results/<date>_<device>_<name>.json (atomically) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if device.type == "cuda" else "cpu"
    day = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d")
    path = RESULTS_DIR / f"{day}_{tag}_{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine_info(device), **payload}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
