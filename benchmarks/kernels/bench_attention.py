"""Benchmark attention on the CPU: our kernel vs torch SDPA vs the explicit-softmax reference.

Shapes: self-attention at L = 3520 and 14080 (one and four latent frames at 720p) and cross-attention
Lq = 3520, Lk = 512 (text tokens); B = 1, H = 2, D = 128 (two of the 2B model's 16 heads). fp32 and bf16,
forward and forward+backward. GFLOP/s counts 4 * Lq * Lk * D * B * H for the forward and 2.5 times that
for the backward (FlashAttention's convention: the five GEMMs of a backward that keeps P), and is also
reported as a fraction of the fp32 `torch.mm` 2048 x 2048 rate measured in this same process.

Peak extra memory is measured apart from the timing, once per (provider, dtype, shape, mode), each in a
fresh process (`--peak-worker`): it builds the inputs, warms the provider up on a tiny shape (thread pool,
lazy library state), resets the peak resident set (VmHWM, via /proc/self/clear_refs) to the current one
and makes one call; the result is VmHWM minus the resident set before the call. Resident memory sees every
allocation that is touched, ATen's and our kernel's std::vector alike (tracemalloc and torch.profiler
see neither or only ATen's), and a fresh process has no freed blocks left in its malloc arenas by earlier
calls, which made last run's in-process numbers read 0 MB. The figure includes the call's outputs (out;
for fwd+bwd also the saved tensors and the three gradients): subtract `outputs_MB` for the working memory.
The reference, which builds the L x L matrix, is skipped at 14080 tokens (its fp32 score matrix alone is
1.6 GB per head).

    python benchmarks/kernels/bench_attention.py [--tokens 3520 14080] [--dtypes float32 bfloat16] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import median, print_table, reexec_with_malloc_tuning, time_fn, write_result  # noqa: E402
from cosmos_engine import ops  # noqa: E402
from cosmos_engine.ops import reference  # noqa: E402

HEADS, HEAD_DIM, TEXT_TOKENS = 2, 128, 512
REFERENCE_MAX_TOKENS = 4096
PEAK_METHOD = ("<provider>_peak_MB: growth of VmHWM over VmRSS during one call, in a fresh process per "
               "measurement after a warm-up on a 64-token shape; includes outputs_MB (the call's outputs: out, "
               "or the three gradients for fwd+bwd, whose saved tensors are freed by then but counted at peak)")


def ours(q, k, v):
    with ops.force_backend("cpu"):
        return ops.attention(q, k, v)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


PROVIDERS = {"ours": ours, "sdpa": sdpa, "reference": reference.attention}


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_inputs(dtype: torch.dtype, q_len: int, kv_len: int):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, n, HEADS, HEAD_DIM, generator=gen).to(dtype) for n in (q_len, kv_len, kv_len))


def make_step(fn, q, k, v, mode: str):
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return fn(q, k, v)
        return step
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    grad_out = torch.randn_like(q)

    def step():
        return torch.autograd.grad(fn(*leaves), leaves, grad_out)
    return step


def peak_worker(spec: dict) -> dict:
    """One call of one provider in this (fresh) process: growth of the peak resident set over the resident
    set just before the call."""
    fn, dtype = PROVIDERS[spec["provider"]], getattr(torch, spec["dtype"])
    make_step(fn, *make_inputs(dtype, 64, 64), spec["mode"])()  # warm-up: thread pool, lazy state
    step = make_step(fn, *make_inputs(dtype, spec["Lq"], spec["Lk"]), spec["mode"])
    before = status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    result = step()
    outputs = [result] if isinstance(result, torch.Tensor) else list(result)
    return {"peak_extra_bytes": status_bytes("VmHWM") - before,
            "outputs_bytes": sum(t.numel() * t.element_size() for t in outputs)}


def peak_extra(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--peak-worker", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"peak worker {spec} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gemm_rate(device: torch.device) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / median(time_fn(lambda: torch.mm(a, b), device, warmup=3, reps=10))


def time_mode(fn, q, k, v, mode: str, reps: int) -> float:
    return median(time_fn(make_step(fn, q, k, v, mode), q.device, warmup=1, reps=reps, min_cpu_reps=reps))


def main() -> None:
    reexec_with_malloc_tuning()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[3520, 14080], help="self-attention lengths")
    parser.add_argument("--cross", type=int, nargs="*", default=[3520], help="query lengths of cross-attention")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--peak-worker", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="attention", help="result file: benchmarks/results/<date>_cpu_<name>.json")
    args = parser.parse_args()
    if args.peak_worker:
        print(json.dumps(peak_worker(json.loads(args.peak_worker))))
        return
    device = torch.device("cpu")
    load_before = os.getloadavg()
    gemm = gemm_rate(device)
    shapes = [("self", n, n) for n in args.tokens] + [("cross", n, TEXT_TOKENS) for n in args.cross]
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for kind, q_len, kv_len in shapes:
            q, k, v = make_inputs(dtype, q_len, kv_len)
            fwd_flop = 4 * q_len * kv_len * HEAD_DIM * HEADS
            for mode in ("fwd", "fwd+bwd"):
                flop = fwd_flop * (1 if mode == "fwd" else 3.5)
                row = {"dtype": dtype_name, "kind": kind, "Lq": q_len, "Lk": kv_len, "mode": mode}
                for name, fn in PROVIDERS.items():
                    if name == "reference" and max(q_len, kv_len) > REFERENCE_MAX_TOKENS:
                        continue
                    seconds = time_mode(fn, q, k, v, mode, args.reps)
                    row[f"{name}_ms"] = seconds * 1e3
                    row[f"{name}_GFLOPs"] = flop / seconds / 1e9
                    if not args.no_memory:
                        peak = peak_extra({"provider": name, "dtype": dtype_name, "Lq": q_len, "Lk": kv_len, "mode": mode})
                        row[f"{name}_peak_MB"] = peak["peak_extra_bytes"] / 2**20
                        row["outputs_MB"] = peak["outputs_bytes"] / 2**20
                row["vs_sdpa"] = row["sdpa_ms"] / row["ours_ms"]
                row["ours_frac_gemm"] = row["ours_GFLOPs"] * 1e9 / gemm
                rows.append(row)
    load = {"before": load_before, "after": os.getloadavg()}
    path = write_result(args.name, device, {
        "op": "attention", "heads": HEADS, "head_dim": HEAD_DIM, "gemm_2048_fp32_GFLOPs": gemm / 1e9,
        "flop_convention": "fwd 4*Lq*Lk*D*H; fwd+bwd 3.5x that",
        "peak_memory_method": None if args.no_memory else PEAK_METHOD, "load_average_1_5_15min": load, "rows": rows,
    })
    print(f"{torch.get_num_threads()} threads, fp32 torch.mm 2048^2: {gemm / 1e9:.1f} GFLOP/s; load average "
          f"before {load_before[0]:.1f}, after {load['after'][0]:.1f} (other processes skew timings)")
    print_table(rows, ["dtype", "kind", "Lq", "Lk", "mode", "ours_ms", "sdpa_ms", "reference_ms", "vs_sdpa",
                       "ours_GFLOPs", "ours_frac_gemm", "ours_peak_MB", "sdpa_peak_MB", "reference_peak_MB", "outputs_MB"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
