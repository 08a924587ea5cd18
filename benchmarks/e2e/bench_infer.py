"""Benchmark sampling: seconds per step and per video, split into text, DiT, solver and VAE decode.

Each part is timed on its own, in one process, with the parts the pipeline uses
(`infer.pipeline.guided_velocity`, `infer.unipc`, `WanVAE.decode`, `TextEncoder.encode`):
* text: embedding the prompt and the negative prompt (one call of batch 2);
* DiT: one guided velocity evaluation (cond + uncond as one DiT call of batch 2), the per-step cost;
* solver: one UniPC step with the velocity precomputed (the solver's own arithmetic);
* decode: the VAE decode of the final latent.
Per video = text + steps * (DiT + solver) + decode (condition encoding is left out: text2world).
Flavors: "tiny" (17 frames 64x112, the tiny recipes) and, with --2b, the 2B DiT and the full-width VAE at a
small size (the Reason1-7B text encoder cannot be downloaded here, so its time is not measured). Random
weights: speed does not depend on them. On a GPU, `--device cuda --size 93x704x1280` measures the real
workload (the published official figure is 228.8 s per video on one H100 SXM, 35 steps with guidance).

    python benchmarks/e2e/bench_infer.py [--2b] [--device cpu] [--size FxHxW]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import median, print_table, reexec_with_malloc_tuning, time_fn, write_result  # noqa: E402
from cosmos_engine.config.schema import ModelConfig  # noqa: E402
from cosmos_engine.infer import unipc  # noqa: E402
from cosmos_engine.infer.pipeline import guided_velocity  # noqa: E402
from cosmos_engine.models.flavors import dit_config, vae_config  # noqa: E402
from cosmos_engine.models.state_dict import build_dit  # noqa: E402
from cosmos_engine.data.encoders import text_encoder_source  # noqa: E402
from cosmos_engine.models.wan_vae import WanVAE  # noqa: E402
from cosmos_engine.prompts import DEFAULT_NEGATIVE_PROMPT  # noqa: E402

STEPS = 35


def bench_flavor(flavor: str, frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype,
                 reps: int) -> dict:
    row: dict = {"flavor": flavor, "size": f"{frames}x{height}x{width}", "dtype": str(dtype).removeprefix("torch.")}
    latent = (1, 16, 1 + (frames - 1) // 4, height // 8, width // 8)
    cfg = dit_config(flavor)
    if flavor == "tiny":
        with tempfile.TemporaryDirectory() as tmp:
            source = text_encoder_source(ModelConfig(flavor="tiny", dtype="float32"), Path(tmp) / "tiny_reason1")
            source.prepare()
            encoder = source.load(device)
            prompts = ["A video of sks teal robot.", DEFAULT_NEGATIVE_PROMPT]
            row["text_s"] = median(time_fn(lambda: encoder.embed(prompts), device, warmup=1, reps=reps))
            text = encoder.embed(prompts).float()
    else:
        row["text_s"] = None  # Reason1-7B is not available here
        text = torch.randn(2, 512, cfg.crossattn_proj_in_channels, device=device)
    net = build_dit(cfg, None, device=device, dtype=dtype).eval().requires_grad_(False)
    noise = unipc.initial_noise(latent, seed=1, device=device)
    mask = torch.zeros((1, 1, *latent[2:]), device=device)
    velocity = guided_velocity(net, text_cond=text[:1], text_uncond=text[1:], guidance=7.0,
                               condition_x0=torch.zeros(latent, device=device), condition_mask=mask, noise=noise, fps=16)
    t = torch.full((1, 1), 999.0, device=device)
    with torch.no_grad():
        row["dit_step_s"] = median(time_fn(lambda: velocity(noise, t), device, warmup=1, reps=reps))
        v = velocity(noise, t)
        schedule = unipc.flow_schedule(STEPS)

        def solver_only():
            for _ in unipc.unipc_steps(lambda x, _t: v, noise, schedule):
                pass

        row["solver_step_s"] = median(time_fn(solver_only, device, warmup=1, reps=reps)) / STEPS
        del net
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vae = WanVAE(vae_config(flavor)).to(device=device, dtype=dtype).eval().requires_grad_(False)
        row["decode_s"] = median(time_fn(lambda: vae.decode(noise.to(dtype)), device, warmup=1, reps=max(1, reps // 3)))
    row["per_step_s"] = row["dit_step_s"] + row["solver_step_s"]
    row["per_video_s"] = (row["text_s"] or 0.0) + STEPS * row["per_step_s"] + row["decode_s"]
    return row


def main() -> None:
    reexec_with_malloc_tuning()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--2b", dest="big", action="store_true", help="also the 2B DiT and full VAE at --size-2b")
    parser.add_argument("--size-2b", default="5x64x64", help="frames x height x width for the 2B point")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [bench_flavor("tiny", 17, 64, 112, device, torch.float32, args.reps)]
    if args.big:
        f, h, w = (int(v) for v in args.size_2b.split("x"))
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        rows.append(bench_flavor("2b", f, h, w, device, dtype, max(1, args.reps // 5)))
    path = write_result("infer", device, {"steps": STEPS, "rows": rows})
    print_table(rows, ["flavor", "size", "dtype", "text_s", "dit_step_s", "solver_step_s", "decode_s", "per_step_s",
                       "per_video_s"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
