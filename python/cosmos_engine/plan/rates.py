"""What each device can do: memory and sustained rates per kind of work, every number with its source.

One table, `DEVICES`, keyed by the names `cosmos-engine plan --gpu` takes. A rate is the throughput a real
kernel reaches, not the datasheet peak, unless the source says otherwise:
* `gemm`: dense matmuls in the training/inference dtype (bf16 on GPUs, fp32 on the CPU), FLOP/s.
* `attention`: the fused attention kernel (flash-style), FLOP/s of its matmuls.
* `bandwidth`: device-memory bytes/s that memory-bound ops (norms, residuals, AdamW, EMA) stream.

Sources are one of "datasheet" (the vendor's spec sheet), "published benchmark" (named), "assumed" (a
stated fraction of the datasheet, because no measurement is known to us), or "measured" (this engine's
own measurement; for `cpu`, taken on the machine that plans, at plan time). No GPU was lent while this
table was written, so no GPU row is "measured"; a session with a GPU corrects its row from
`scripts/gpu_check.sh` and says so here.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

GIB = 2**30

# A large bf16 GEMM reaches about this fraction of the dense datasheet peak (assumption where no published
# benchmark for that GPU is named); memory-bound kernels reach about this fraction of the datasheet bandwidth.
ASSUMED_GEMM_EFFICIENCY = 0.70
ASSUMED_ATTENTION_EFFICIENCY = 0.55
ASSUMED_BANDWIDTH_EFFICIENCY = 0.80


@dataclass(frozen=True)
class Rate:
    value: float    # FLOP/s or bytes/s
    source: str     # where the number comes from


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    memory_bytes: int
    memory_source: str
    gemm: Rate
    attention: Rate
    bandwidth: Rate
    is_gpu: bool = True

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "memory_gib": self.memory_bytes / GIB,
                "memory_source": self.memory_source,
                **{kind: {"value": getattr(self, kind).value, "source": getattr(self, kind).source}
                   for kind in ("gemm", "attention", "bandwidth")}}


def _gpu(name: str, description: str, memory_gb: float, peak_bf16_tflops: float, bandwidth_tbs: float, sheet: str,
         gemm: Rate | None = None, attention: Rate | None = None) -> Device:
    """A GPU row from its datasheet (memory in GB as the vendor counts them, 1e9 bytes), with the sustained
    GEMM and attention rates of a named benchmark where one is known, else the assumed fractions."""
    peak = peak_bf16_tflops * 1e12
    gemm = gemm or Rate(ASSUMED_GEMM_EFFICIENCY * peak,
                        f"assumed: {ASSUMED_GEMM_EFFICIENCY:.0%} of the {peak_bf16_tflops:g} TFLOPS dense bf16 datasheet peak ({sheet})")
    attention = attention or Rate(ASSUMED_ATTENTION_EFFICIENCY * peak,
                                  f"assumed: {ASSUMED_ATTENTION_EFFICIENCY:.0%} of the {peak_bf16_tflops:g} TFLOPS dense bf16 "
                                  f"datasheet peak ({sheet})")
    bandwidth = Rate(ASSUMED_BANDWIDTH_EFFICIENCY * bandwidth_tbs * 1e12,
                     f"assumed: {ASSUMED_BANDWIDTH_EFFICIENCY:.0%} of the {bandwidth_tbs:g} TB/s datasheet bandwidth ({sheet})")
    return Device(name, description, int(memory_gb * 1e9), f"datasheet ({sheet})", gemm, attention, bandwidth)


# FlashAttention-3 forward, bf16, head dim 128, batch x seq = 16k, on an H100 (pytorch/benchmark PR #2391,
# commit ff65cb6): 620 TFLOPS at seq 16384. Our 2B model's attention is head dim 128 at 10k-40k tokens.
_FA3_H100 = Rate(620e12, "published benchmark: FlashAttention-3 forward, bf16, head dim 128, seq 16384 on H100 "
                         "(pytorch/benchmark PR #2391): 620 TFLOPS; backward assumed at the same rate")
_B200_GEMM = Rate(1610e12, "published benchmark: cuBLAS bf16 GEMM 8192^3 on B200 (pyptx.dev/performance): 1610 TFLOPS")

_GPUS = [
    _gpu("h100-sxm", "NVIDIA H100 SXM5 80GB", 80, 989, 3.35, "H100 datasheet, SXM5", attention=_FA3_H100),
    _gpu("h100-pcie", "NVIDIA H100 PCIe 80GB", 80, 756, 2.0, "H100 datasheet, PCIe"),
    _gpu("h200", "NVIDIA H200 SXM 141GB", 141, 989, 4.8, "H200 datasheet",
         attention=Rate(620e12, "assumed equal to H100 SXM (same GH100 tensor cores): " + _FA3_H100.source)),
    _gpu("a100-80g", "NVIDIA A100 SXM 80GB", 80, 312, 2.039, "A100 datasheet, 80GB SXM"),
    _gpu("a100-40g", "NVIDIA A100 SXM 40GB", 40, 312, 1.555, "A100 datasheet, 40GB SXM"),
    _gpu("l40s", "NVIDIA L40S 48GB", 48, 362, 0.864, "L40S datasheet"),
    _gpu("b200", "NVIDIA B200 180GB (HGX B200)", 180, 2250, 8.0, "HGX B200 datasheet", gemm=_B200_GEMM),
    _gpu("rtx4090", "NVIDIA GeForce RTX 4090 24GB", 24, 165.2, 1.008, "Ada whitepaper, bf16 with fp32 accumulate"),
    _gpu("rtx5090", "NVIDIA GeForce RTX 5090 32GB", 32, 209.5, 1.792, "Blackwell GeForce whitepaper, bf16 with fp32 accumulate"),
]
GPU_NAMES = tuple(d.name for d in _GPUS)
DEVICE_NAMES = (*GPU_NAMES, "cpu")


def _median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@functools.cache
def measure_cpu() -> Device:
    """This machine as a `cpu` row: host memory from /proc/meminfo, and the fp32 rates measured now with
    the ops the CPU runs use (torch.matmul; our attention op; a tensor copy), about 0.5 s in all."""
    import torch

    from cosmos_engine import ops

    n = 768
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = 2 * n**3 / _median_seconds(lambda: torch.matmul(a, b), 5)
    q, k, v = (torch.randn(1, 1024, 2, 128) for _ in range(3))
    with torch.no_grad():
        attention = 4 * 1024 * 1024 * 2 * 128 / _median_seconds(lambda: ops.attention(q, k, v), 3)
    src = torch.randn(16 * 2**20 // 4)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / _median_seconds(lambda: dst.copy_(src), 5)
    threads = torch.get_num_threads()
    how = f"measured at plan time on this machine, fp32, {threads} threads"
    return Device("cpu", f"this CPU ({threads} threads)", host_memory_bytes(), "measured: MemTotal in /proc/meminfo",
                  Rate(gemm, f"{how}: torch.matmul {n}^3"), Rate(attention, f"{how}: ops.attention 1x1024x2x128"),
                  Rate(bandwidth, f"{how}: copy of 16 MiB"), is_gpu=False)


def host_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def device(name: str) -> Device:
    """The row of `name` (one of DEVICE_NAMES); ValueError naming the valid ones otherwise."""
    if name == "cpu":
        return measure_cpu()
    for d in _GPUS:
        if d.name == name:
            return d
    raise ValueError(f"unknown GPU {name!r}; expected one of: {', '.join(DEVICE_NAMES)}")
