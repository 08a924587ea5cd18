"""Benchmark post-training steps: seconds per step and its split, with the latent cache on vs off.

Runs `cosmos-engine run` on the tiny recipe (a synthetic dataset it draws itself) twice, `data.cache =
"windows"` and `"off"` (the official behaviour: the VAE encodes every step's window), and reads each step's
phases from the run's metrics.jsonl: data wait (with the cache off this includes the VAE encode), DiT
forward, backward, optimizer, EMA. The first `--warmup` steps are left out. The 2b flavor is not measured
on the CPU: its fp32 parameters, gradients and Adam moments alone take 33 GB, more than this machine has.

    python benchmarks/e2e/bench_train.py [--steps 12] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import print_table, reexec_with_malloc_tuning, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PHASES = ["data_wait_s", "forward_s", "backward_s", "optimizer_s", "ema_s", "step_time_s"]


def run(dataset: Path, root: Path, cache: str, steps: int) -> list[dict]:
    name = f"bench_{cache}"
    cmd = [sys.executable, "-m", "cosmos_engine.cli", "run", str(REPO / "recipes" / "tiny_posttrain.toml"),
           "--set", f"data.dataset_dir={dataset}", "--set", f"data.cache={cache}", "--set", f"job.name={name}",
           "--set", f"train.max_steps={steps}", "--set", f"checkpoint.save_every={steps}"]
    subprocess.run(cmd, check=True, env={**os.environ, "IMAGINAIRE_OUTPUT_ROOT": str(root)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = root / "cosmos_predict_v2p5" / "tiny" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    reexec_with_malloc_tuning()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "cosmos_engine.cli", "prepare", "--synthetic", "4", "--out", str(dataset)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for cache in ("windows", "off"):
            records = run(dataset, Path(tmp) / "runs", cache, args.steps)[args.warmup:]
            row = {"recipe": "tiny", "cache": cache, "steps": len(records)}
            row.update({p: statistics.median(r[p] for r in records) for p in PHASES})
            row["samples_per_s"] = statistics.median(r["samples_per_s"] for r in records)
            row["peak_memory_gb"] = max(r["peak_memory_gb"] for r in records)
            rows.append(row)
    speedup = rows[0]["samples_per_s"] / rows[1]["samples_per_s"]
    path = write_result("train", torch.device("cpu"), {"rows": rows, "cache_speedup_samples_per_s": speedup})
    print_table(rows, ["recipe", "cache", "steps", *PHASES, "samples_per_s", "peak_memory_gb"])
    print(f"cache on vs off: {speedup:.1f}x samples/s; wrote {path}")


if __name__ == "__main__":
    main()
