"""Benchmark the DiT end to end: forward and forward+backward time and peak host memory.

Flavors: "tiny" (fp32 and bf16) and "2b" (fp32 only: bf16 GEMMs are pathologically slow on CPUs without
AVX512-BF16, see BUILD_NOTES), and the point "long": the tiny net on 4 latent frames of 44 x 80 patches
(14080 tokens, --long-grid), where attention dominates, fp32 and bf16. Paths: "kernel" (the default op
dispatch: our compiled ops, our attention included), "reference" (`ops.force_backend("reference")`: the
PyTorch reference ops) and, for "long", "kernel_sdpa" (our compiled ops with torch SDPA for attention,
`ops.attention.sdpa_on_cpu()`), so its rows compare whole-DiT time with our attention vs SDPA, and, for
"tiny" and "2b" in fp32 when diffusers is installed, "diffusers": diffusers' `CosmosTransformer3DModel` holding
the same weights (renamed by `models.diffusers_format`) on the same inputs, a peer implementation.
Shapes: 512 text tokens (the real count); video tokens per flavor (--tiny-grid, --2b-grid, in latent
frames x patch rows x patch columns). At small video token counts the 100352 -> 1024 text projection and
the cross-attention K/V projections of the 512 text tokens are a large part of the 2B cost.

Each (flavor, dtype, path) runs in its own process so that its peak resident memory (VmHWM of
/proc/self/status, read after the forward and again after forward+backward) is its own. Weights of the 2B
net are uniform random (its official init takes half a minute here and the timing does not depend on the
values). Timing: time.perf_counter around each call after warm-up, the median; the tiny flavor uses
benchmarks.common.time_fn (10 repetitions), the 2B flavor and the long point --2b-reps / --long-reps
repetitions because one forward+backward takes tens of seconds on a CPU. The 2B forward+backward needs about twice the weights (7.7 GiB fp32 each for
weights and gradients) and is skipped, saying so, when MemAvailable after building is below 1.25x the weights.

    python benchmarks/e2e/bench_dit.py [--flavors tiny 2b long] [--tiny-grid 2 16 16] [--2b-grid 1 8 8] [--2b-reps 2]
                                       [--long-grid 4 44 80] [--long-reps 2] [--paths kernel reference diffusers ...]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import median, print_table, time_fn, write_result  # noqa: E402
from cosmos_engine import ops  # noqa: E402
from cosmos_engine.models import diffusers_format  # noqa: E402
from cosmos_engine.models.cosmos_dit import CosmosDiT  # noqa: E402
from cosmos_engine.ops.attention import sdpa_on_cpu  # noqa: E402
from cosmos_engine.models.flavors import dit_config  # noqa: E402

TEXT_TOKENS = 512
GIB = 2**30
PATHS = ("kernel", "reference", "kernel_sdpa", "diffusers")


def proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def build(flavor: str, dtype: torch.dtype) -> CosmosDiT:
    with torch.device("meta"):
        net = CosmosDiT(dit_config(flavor))
    net.to_empty(device="cpu")
    if flavor == "tiny":
        net.init_weights()
    else:
        net.pos_embedder.reset_parameters()
        with torch.no_grad():
            for p in net.parameters():
                bound = 1.0 / p.shape[-1] ** 0.5 if p.dim() > 1 else 1.0
                p.uniform_(-bound, bound)
    return net.to(dtype)


def make_inputs(flavor: str, dtype: torch.dtype, grid: tuple[int, int, int]) -> dict:
    config = dit_config(flavor)
    frames, rows, cols = grid
    height, width = rows * config.patch_spatial, cols * config.patch_spatial
    mask = torch.zeros(1, 1, frames, height, width, dtype=dtype)
    mask[:, :, :1] = 1
    return {
        "x_B_C_T_H_W": torch.randn(1, config.in_channels, frames, height, width, dtype=dtype),
        "timesteps_B_T": torch.tensor([[500.0]]),
        "crossattn_emb": torch.randn(1, TEXT_TOKENS, config.text_in_channels, dtype=dtype),
        "condition_video_input_mask_B_C_T_H_W": mask,
        "padding_mask": torch.zeros(1, 1, 8 * height, 8 * width, dtype=dtype),
    }


def few_times(fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def worker(spec: dict) -> dict:
    """One (flavor, dtype, path) in this process; returns timings and memory."""
    dtype = getattr(torch, spec["dtype"])
    grid = tuple(spec["grid"])
    net = build(spec["flavor"], dtype)
    inputs = make_inputs(spec["flavor"], dtype, grid)
    if spec["path"] == "diffusers":  # the same weights (shared, not copied) in diffusers' class
        config = net.config
        net = diffusers_format.diffusers_transformer(config, net.state_dict())
        inputs = diffusers_format.diffusers_inputs(config, **inputs)
    weights_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    result = {**spec, "tokens": grid[0] * grid[1] * grid[2], "text_tokens": TEXT_TOKENS,
              "params": sum(p.numel() for p in net.parameters()), "weights_GB": weights_bytes / GIB,
              "rss_built_GB": proc_status_bytes("VmRSS") / GIB}
    device = torch.device("cpu")

    def forward():
        with torch.no_grad():
            net(**inputs)

    def forward_backward():
        out = net(**inputs)
        (out[0] if isinstance(out, tuple) else out).square().mean().backward()

    def timed(fn):
        if "reps" not in spec:
            return time_fn(fn, device, warmup=3, reps=10)
        return few_times(fn, warmup=1, reps=spec["reps"])

    paths = {"kernel": contextlib.nullcontext, "reference": lambda: ops.force_backend("reference"),
             "kernel_sdpa": sdpa_on_cpu, "diffusers": contextlib.nullcontext}
    with paths[spec["path"]]():
        result["fwd_times"] = timed(forward)
        result["fwd_s"] = median(result["fwd_times"])
        result["peak_fwd_GB"] = proc_status_bytes("VmHWM") / GIB
        if not spec["backward"]:
            result["fwdbwd_note"] = "not run for this path"
        elif mem_available_bytes() < 1.25 * weights_bytes:  # the gradients need as much again as the weights
            result["fwdbwd_note"] = f"skipped: MemAvailable {mem_available_bytes() / GIB:.1f} GiB < 1.25 x weights"
        else:
            result["fwdbwd_times"] = timed(forward_backward)
            result["fwdbwd_s"] = median(result["fwdbwd_times"])
            result["peak_fwdbwd_GB"] = proc_status_bytes("VmHWM") / GIB
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavors", nargs="+", default=["tiny", "2b", "long"], choices=["tiny", "2b", "long"])
    parser.add_argument("--tiny-grid", type=int, nargs=3, default=[2, 16, 16], metavar=("T", "H", "W"))
    parser.add_argument("--2b-grid", dest="grid_2b", type=int, nargs=3, default=[1, 8, 8], metavar=("T", "H", "W"))
    parser.add_argument("--2b-reps", dest="reps_2b", type=int, default=2)
    parser.add_argument("--2b-reference-backward", dest="reference_backward_2b", action="store_true",
                        help="also time forward+backward of the 2B net on the reference path (another ~minute)")
    parser.add_argument("--long-grid", type=int, nargs=3, default=[4, 44, 80], metavar=("T", "H", "W"))
    parser.add_argument("--long-reps", type=int, default=2)
    parser.add_argument("--long-dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS,
                        help="run only these paths (diffusers: only when diffusers is installed)")
    parser.add_argument("--name", default="dit", help="result file: benchmarks/results/<date>_cpu_<name>.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    peer = ["diffusers"] if importlib.util.find_spec("diffusers") else []
    if not peer and "diffusers" in args.paths:
        print("diffusers is not installed: its CosmosTransformer3DModel is not measured")
    specs = []
    if "tiny" in args.flavors:
        specs += [{"flavor": "tiny", "dtype": dtype, "path": path, "grid": args.tiny_grid, "backward": True}
                  for dtype in ("float32", "bfloat16") for path in ["kernel", "reference"] + peer * (dtype == "float32")]
    if "2b" in args.flavors:
        specs += [{"flavor": "2b", "dtype": "float32", "path": path, "grid": args.grid_2b, "reps": args.reps_2b,
                   "backward": path != "reference" or args.reference_backward_2b} for path in ["kernel", "reference"] + peer]
    if "long" in args.flavors:
        specs += [{"flavor": "tiny", "point": "long", "dtype": dtype, "path": path, "grid": args.long_grid,
                   "reps": args.long_reps, "backward": True}
                  for dtype in args.long_dtypes for path in ("kernel", "kernel_sdpa")]
    specs = [spec for spec in specs if spec["path"] in args.paths]
    load_before = os.getloadavg()
    rows = []
    for spec in specs:
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
        if out.returncode != 0:
            rows.append({**spec, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for row in rows:
        row["fwd_ms"] = row.get("fwd_s", float("nan")) * 1e3
        row["fwdbwd_ms"] = row.get("fwdbwd_s", float("nan")) * 1e3
    for row in rows:  # long point: whole-DiT speed-up of our attention over SDPA, same dtype
        sdpa_row = next((r for r in rows if r.get("point") == "long" and r["path"] == "kernel_sdpa"
                         and r["dtype"] == row["dtype"]), None)
        if row.get("point") == "long" and row["path"] == "kernel" and sdpa_row:
            row["fwd_vs_sdpa"] = sdpa_row["fwd_ms"] / row["fwd_ms"]
            row["fwdbwd_vs_sdpa"] = sdpa_row["fwdbwd_ms"] / row["fwdbwd_ms"]
    load = {"before": load_before, "after": os.getloadavg()}
    path = write_result(args.name, torch.device("cpu"), {"benchmark": "dit_e2e", "text_tokens": TEXT_TOKENS,
                                                     "load_average_1_5_15min": load, "rows": rows})
    print(f"{torch.get_num_threads()} threads, {TEXT_TOKENS} text tokens; memory in GiB (VmHWM, per process); "
          f"load average before {load_before[0]:.1f}, after {load['after'][0]:.1f} (other processes skew timings)")
    print_table(rows, ["flavor", "point", "dtype", "path", "tokens", "fwd_ms", "fwdbwd_ms", "fwd_vs_sdpa", "fwdbwd_vs_sdpa", "weights_GB", "rss_built_GB",
                       "peak_fwd_GB", "peak_fwdbwd_GB", "fwdbwd_note", "error"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
