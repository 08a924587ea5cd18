"""Benchmark the cached windows: build time and disk size vs `[data] window_stride`, and the NeMo set's cost.

1. Tiny size, measured: the synthetic set of the quick start (`--clips` clips of `--frames` frames at 64x112,
   as `prepare --synthetic` draws them) cached for the tiny recipe's 17-frame windows with the tiny VAE (the
   tiny recipe's encoder: the Wan2.1 structure at width 16, seeded random weights, fp32) at each stride in
   `--strides`, each into an empty cache: windows, bytes on disk (measured from the files), build seconds
   (decode + encode + write; the caption uses a cheap stand-in, since captions do not depend on the stride)
   and the seconds of a second build that finds everything cached (it reads only the entries' headers).
2. The NeMo set, scaled: the windows and bytes at each stride follow from `window_starts` and the latent
   size (16 x 24 x 88 x 160 bf16 per 93-frame 704x1280 window, plus the safetensors header); the encode
   time multiplies them by the seconds per window of the 2B VAE architecture that `bench_data.py` measured
   (its result file, `--vae-result`; on this CPU that figure is a least-squares line through 1-, 5- and
   9-frame encodes, fp32). The NeMo clips' frame counts are not known here (the set is not downloaded;
   the reference calls it "4 long videos", UNVERIFIED), so `--nemo-frames` states them and the result says
   they are assumed. No GPU figure: none was measured.

    python benchmarks/e2e/bench_windows.py [--clips 1] [--frames 33] [--strides 1 2 4 8 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import print_table, write_result  # noqa: E402
from cosmos_engine.config.schema import DataConfig, ModelConfig  # noqa: E402
from cosmos_engine.data.cache import LatentCache, LatentKey, _EntrySize, window_starts  # noqa: E402
from cosmos_engine.data.dataset import VideoWindowDataset, load_records, make_decoder  # noqa: E402
from cosmos_engine.data.prepare import prepare_synthetic  # noqa: E402
from cosmos_engine.train.data import LatentEncoder, build_vae  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = {"num_frames": 17, "height": 64, "width": 112}
NEMO = {"num_frames": 93, "height": 704, "width": 1280}
NEMO_LATENT = (16, 24, 88, 160)  # bf16, as the 2B VAE on a GPU writes it


class CaptionStandIn:
    identity = "bench-windows-caption-stand-in"

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.zeros(len(prompts), 8, 16)


def tiny_builds(clips: int, frames: int, strides: list[int], budget: int, tmp: Path) -> list[dict]:
    dataset_dir = tmp / "tiny"
    prepare_synthetic(dataset_dir, count=clips, seed=0, frames=frames, height=TINY["height"], width=TINY["width"])
    videos = VideoWindowDataset(load_records(dataset_dir), TINY["num_frames"], TINY["height"], TINY["width"],
                                make_decoder("pyav"))
    vae = LatentEncoder(build_vae(ModelConfig(flavor="tiny", dtype="float32"), torch.device("cpu")), tiled=False)
    rows = []
    for stride in strides:
        shutil.rmtree(dataset_dir / "cache", ignore_errors=True)
        cache = LatentCache(dataset_dir)
        windows = {"window_stride": stride, "max_cached_windows": budget}
        t0, cpu0 = time.perf_counter(), time.process_time()
        stats = cache.build(videos, vae, CaptionStandIn(), **windows)
        build_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        t0 = time.perf_counter()
        again = cache.build(videos, vae, CaptionStandIn(), **windows)
        cached_s = time.perf_counter() - t0
        assert again.latents_encoded == 0
        rows.append({"stride": stride, "windows": stats.windows, "bytes": stats.window_bytes,
                     "build_s": round(build_s, 2), "s_per_window": round(build_s / stats.windows, 3),
                     "cpu_s_per_window": round(cpu_s / stats.windows, 3),
                     "cached_build_s": round(cached_s, 3)})
        print(f"tiny stride {stride}: {stats.windows} windows, {stats.window_bytes} bytes, {build_s:.1f} s "
              f"(cached: {cached_s:.2f} s)", flush=True)
    return rows


def nemo_scaled(frames: list[int], strides: list[int], budgets: list[int], window_s: float) -> list[dict]:
    size = _EntrySize(NEMO_LATENT, torch.bfloat16)
    rows = []
    for budget in budgets:
        for stride in strides:
            keys = [LatentKey(f"{i:064x}", start, NEMO["num_frames"], NEMO["height"], NEMO["width"], "wan2.1-vae/" + "0" * 64)
                    for i, n in enumerate(frames) for start in window_starts(n, NEMO["num_frames"], stride, budget)]
            total = sum(size(k) for k in keys)
            rows.append({"stride": stride, "max_cached_windows": budget, "windows": len(keys),
                         "gigabytes": round(total / 1e9, 2), "encode_hours": round(len(keys) * window_s / 3600, 1),
                         "distinct_starts_of_official": sum(n - NEMO["num_frames"] for n in frames)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1,
                        help="synthetic clips (the quick start draws 4; windows and time scale with the count)")
    parser.add_argument("--frames", type=int, default=33, help="frames per synthetic clip (prepare's default)")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--nemo-strides", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 93])
    parser.add_argument("--nemo-frames", type=int, nargs="+", default=[1709] * 4,
                        help="ASSUMED frame counts of the NeMo clips (default: 4 x 1709, the issue's 812-window example)")
    parser.add_argument("--vae-result", type=Path, default=REPO / "benchmarks" / "results" / "20261124_cpu_data.json",
                        help="a bench_data.py result: its vae_encode.window_seconds is the 2B VAE's time per window")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    budget = DataConfig().max_cached_windows
    vae_result = json.loads(args.vae_result.read_text())
    vae = vae_result["vae_encode"]

    with tempfile.TemporaryDirectory() as tmp:
        tiny = tiny_builds(args.clips, args.frames, args.strides, budget, Path(tmp))
    print_table(tiny, ["stride", "windows", "bytes", "build_s", "s_per_window", "cpu_s_per_window", "cached_build_s"])
    nemo = nemo_scaled(args.nemo_frames, args.nemo_strides, [budget, 10**9], vae["window_seconds"])
    print_table(nemo, ["stride", "max_cached_windows", "windows", "gigabytes", "encode_hours"])

    path = write_result("windows", cpu, {
        "tiny": {"clips": args.clips, "frames": args.frames, **TINY, "vae": "tiny Wan2.1 (width 16), fp32, CPU",
                 "max_cached_windows": budget, "rows": tiny},
        "nemo_scaled": {
            "frames_per_video": args.nemo_frames, "frames_source": "assumed (the NeMo set is not downloaded here)",
            **NEMO, "latent": list(NEMO_LATENT), "latent_dtype": "bfloat16",
            "vae_seconds_per_window": vae["window_seconds"], "vae_seconds_source": vae["window_source"],
            "vae_dtype": vae["dtype"], "vae_result_file": str(args.vae_result.relative_to(REPO)),
            "vae_result_commit": vae_result["machine"]["commit"], "vae_device": vae_result["machine"]["cpu_model"],
            "rows": nemo},
        "load_average_1_5_15min": list(os.getloadavg()),
        "notes": ["tiny rows are measured in this run (wall time on a shared 2-core machine: see the load "
                  "average; cpu_s_per_window is this process's CPU time, all threads); nemo rows are computed: windows and bytes exactly from "
                  "window_starts and the entry format, hours = windows x the CPU seconds per window of the "
                  "vae_result_file (2B VAE architecture, fp32, 2-core CPU); no GPU time was measured",
                  "distinct_starts_of_official: how many starts the official loader draws from, "
                  "randint(0, frames - 93) per video"],
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
