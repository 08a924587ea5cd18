"""Start-up cost of `cosmos-engine run recipes/tiny_posttrain.toml` with a warm cache: wall time, the time
until the training data is ready (the "training data:" log line, after the caches are checked and the frozen
encoders are dropped) and the peak RSS of the process, for one checkout.

    python benchmarks/e2e/bench_start.py --label before   # on the state to compare against
    python benchmarks/e2e/bench_start.py --label after    # on the change

Each run is one step of a fresh run folder on a dataset whose latent and caption caches were filled by a
first, untimed run. Results go under the label's key in benchmarks/results/<date>_cpu_lean_start.json, so
the two labels (measured on two checkouts) end up in one file; the labels' medians are compared once both
are there. Benchmarks never assert speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import RESULTS_DIR, machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "tiny_posttrain.toml"
READY = "training data:"


def one_run(dataset: Path, root: Path, name: str) -> dict:
    """Run one step; return wall time, time to the data-ready log line and the child's peak RSS."""
    command = [sys.executable, "-m", "cosmos_engine.cli", "run", str(RECIPE), "--set", f"data.dataset_dir={dataset}",
               "--set", f"job.name={name}", "--set", "train.max_steps=1", "--set", "checkpoint.save_every=1"]
    env = {**os.environ, "IMAGINAIRE_OUTPUT_ROOT": str(root)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    ready, lines = None, []
    for line in proc.stderr:
        lines.append(line)
        if ready is None and READY in line:
            ready = time.perf_counter() - t0
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{''.join(lines[-30:])}")
    return {"wall_s": wall, "data_ready_s": ready, "peak_rss_mb": usage.ru_maxrss / 1024,
            "command": shlex.join(command)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help='key of this measurement, e.g. "before" or "after"')
    parser.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up run (default 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = tmp / "dataset"
        subprocess.run([sys.executable, "-m", "cosmos_engine.cli", "prepare", "--synthetic", "2", "--out", str(dataset)],
                       check=True, capture_output=True)
        warm_up = one_run(dataset, tmp / "runs", "warm_up")  # fills the caches and writes the tiny encoder
        runs = [one_run(dataset, tmp / "runs", f"timed_{i}") for i in range(args.runs)]

    summary = {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "data_ready_s", "peak_rss_mb")}
    entry = {"machine": machine_info(torch.device("cpu")), "warm_up": warm_up, "runs": runs, "median": summary}
    path = RESULTS_DIR / f"{time.strftime('%Y%m%d', time.gmtime())}_cpu_lean_start.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result["what"] = ("cosmos-engine run recipes/tiny_posttrain.toml, 1 step, warm latent and caption caches; "
                      "medians of the timed runs")
    result[args.label] = entry
    labels = [k for k in ("before", "after") if k in result]
    if len(labels) == 2:
        result["after_over_before"] = {k: result["after"]["median"][k] / result["before"]["median"][k]
                                       for k in summary}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"label": args.label, **summary}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
