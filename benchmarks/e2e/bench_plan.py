"""The plan's validation table: predicted vs measured memory and time on this CPU.

Rows: the process baseline (the imports `run` and `infer` make), `run` on the tiny recipe (peak RSS of the
process, median step time from its metrics.jsonl, the checkpoint's bytes on disk), `infer` on the tiny
recipe (peak RSS; wall time of the whole command, start-up included, so only a bound), and the 2b point of
benchmarks/e2e/bench_train.py (5 frames of 128x128, fp32, activation checkpointing none, forward and
backward only, no AdamW moments and no EMA, because the 41 GB fp32 training state does not fit in 24 GB).
The 2b point is the one recorded by bench_train (`--train-result`, default its newest CPU result), not
re-run here: its 18 GB peak does not fit next to the other processes sharing this machine.

    python benchmarks/e2e/bench_plan.py [--train-result benchmarks/results/20261124_cpu_train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import RESULTS_DIR, print_table, write_result  # noqa: E402
from cosmos_engine.config import load_recipe  # noqa: E402
from cosmos_engine.plan import make_plan  # noqa: E402
from cosmos_engine.plan import memory as mem  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "cosmos_engine.cli"]
BASELINE_CODE = ("import resource, cosmos_engine.cli, cosmos_engine.train.trainer, cosmos_engine.train.data, transformers;"
                 "from transformers import Qwen2_5_VLForConditionalGeneration;"
                 "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")


def child(cmd: list[str], env: dict) -> tuple[int, float]:
    """(peak RSS bytes, wall seconds) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed")
    return usage.ru_maxrss * 1024, time.perf_counter() - start


def row(what: str, quantity: str, predicted: float, measured: float, note: str = "") -> dict:
    return {"what": what, "quantity": quantity, "predicted": predicted, "measured": measured,
            "ratio": predicted / measured if measured else None, "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-result", type=Path, default=RESULTS_DIR / "20261124_cpu_train.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "IMAGINAIRE_OUTPUT_ROOT": str(tmp / "root"), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", BASELINE_CODE], env=env, capture_output=True, text=True, check=True)
        rows.append(row("process baseline", "peak RSS bytes", mem.CPU_PROCESS_BASELINE, int(out.stdout.split()[-1]),
                        "the constant in plan/memory.py vs a fresh measurement"))

        dataset = tmp / "tiny"
        subprocess.run([*CLI, "prepare", "--synthetic", "2", "--out", str(dataset)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        overrides = [f"data.dataset_dir={dataset}", "job.name=bench_plan", "train.max_steps=12", "checkpoint.save_every=12"]
        recipe = load_recipe(REPO / "recipes" / "tiny_posttrain.toml", overrides)
        torch.set_num_threads(1)  # the runs use one thread (OMP_NUM_THREADS=1): plan for the same rates
        plan = make_plan(recipe, "train", "cpu")
        rss, _ = child([*CLI, "run", str(REPO / "recipes" / "tiny_posttrain.toml"), *[a for o in overrides
                                                                                       for a in ("--set", o)]], env)
        rows.append(row("tiny run", "peak RSS bytes", plan.host_bytes, rss))
        run_dir = tmp / "root" / "cosmos_predict_v2p5" / "tiny" / "bench_plan"
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][2:]
        rows.append(row("tiny run", "step time s", plan.time["total_s"], statistics.median(r["step_time_s"] for r in records),
                        "median of steps 3-12; tiny steps are dominated by per-op overhead the model leaves out"))
        folder = run_dir / "checkpoints" / "iter_000000012"
        on_disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        rows.append(row("tiny run", "checkpoint bytes", next(line.bytes for line in plan.disk
                                                            if line.name == "checkpoint (one)"), on_disk))

        subprocess.run([*CLI, "convert", str(folder)], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        infer_overrides = [f"infer.output_dir={tmp / 'out'}"]
        infer_recipe = load_recipe(REPO / "recipes" / "tiny_infer.toml", infer_overrides)
        infer_plan = make_plan(infer_recipe, "infer", "cpu")
        rss, wall = child([*CLI, "infer", str(REPO / "recipes" / "tiny_infer.toml"), "--checkpoint-path",
                           str(folder / "model_ema_fp32.pt"), "--no-progress",
                           *[a for o in infer_overrides for a in ("--set", o)]], env)
        rows.append(row("tiny infer", "peak RSS bytes", infer_plan.host_bytes, rss))
        rows.append(row("tiny infer", "time s", infer_plan.time["total_s"], wall,
                        "measured: the whole command, start-up and VAE included (a bound, not the same quantity)"))

    recorded = json.loads(args.train_result.read_text())
    point = recorded["2b"]
    window = point["window"]
    train_2b = load_recipe(REPO / "recipes" / "nemo_posttrain.toml", [
        f"data.num_frames={window['frames']}", f"data.height={window['height']}", f"data.width={window['width']}",
        'train.precision="fp32"', 'model.dtype="float32"', 'model.activation_checkpointing="none"', "train.ema=false",
        f"data.dataset_dir={json.dumps(str(Path(tempfile.gettempdir()) / 'no-dataset'))}"])
    torch.set_num_threads(recorded["machine"]["threads"])
    # bench_train cached its windows with the 2B VAE and took captions from a stand-in: no text encoder.
    plan_2b = make_plan(train_2b, "train", "cpu", cache_state={"readable": True, "windows": 2, "windows_cached": 0,
                                                                "prompts": 1, "prompts_cached": 1})
    step = plan_2b.phases["training step"]
    # What bench_train held: no AdamW moments (no optimizer), no EMA; its cache build ran first in the process.
    without = sum(line.bytes for line in step if line.name != "AdamW moments")
    host = plan_2b.host_bytes - plan_2b.peak_bytes + max(without, sum(line.bytes for line in
                                                                      plan_2b.phases.get("cache build (before the DiT)", [])))
    windows = next(r for r in recorded["rows"] if r["flavor"] == "2b" and r["cache"] == "windows")
    rows.append(row("2b fwd+bwd (bench_train)", "peak RSS bytes", host, windows["peak_memory_gb"] * 2**30,
                    f"measured by bench_train at commit {recorded['machine']['commit'][:7]}, {recorded['machine']['date']}"))
    parts = plan_2b.time["parts_s"]
    fwd_bwd = sum(v for k, v in parts.items() if k not in ("clip + AdamW", "EMA"))
    rows.append(row("2b fwd+bwd (bench_train)", "forward+backward s", fwd_bwd,
                    windows["forward_s"] + windows["backward_s"],
                    "rates measured now, at plan time, on a machine shared with other jobs"))
    path = write_result("plan", torch.device("cpu"), {
        "rows": rows, "cpu_rates": plan.device.as_dict(), "train_result": str(args.train_result),
        "load_average": os.getloadavg()})
    print_table(rows, ["what", "quantity", "predicted", "measured", "ratio", "note"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
