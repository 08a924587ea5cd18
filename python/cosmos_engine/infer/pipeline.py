"""Video2World sampling: text2world, image2world and video2world, as the official inference does.

Data flow (DESIGN.md §4; reference vae_data_io.md §5.3-5.5, dit_and_training.md §3):

1. Text: the prompts and the negative prompt of every sample are embedded first, through the embedding
   cache in <output_dir>/.cache/text: the text encoder is loaded only for texts not cached yet (one encoder
   pass per distinct text) and dropped right after, so the 7B Reason1 model and the DiT never share the GPU.
2. Condition frames (`num_conditional_frames` n = 0, 1, 2 latent frames): the official builds a 93-frame
   uint8 video -- image: the image then zeros; video: the LAST 4(n-1)+1 input frames then repeats of the last
   one; text2world: zeros -- resizes it (scale to cover, bilinear antialiased, rounded; then centre crop) and
   VAE-encodes it; the mask keeps latent frames [0, n). The VAE is causal (latent frame k depends on pixel
   frames <= 4k only), so only the first 1 + 4(n-1) pixel frames are built and encoded here: the same
   condition latent for a fraction of the cost. The other latent frames of x0 are zeros (masked out).
3. Sampling: `unipc` (35 steps, shift 5, or the "post-trained" Karras variant) from
   `initial_noise(seed)`, the official numpy noise. Each step makes ONE DiT call of batch 2B (cond | uncond),
   the uncond branch with the negative prompt's embedding, both with the condition frames re-injected
   (`condition_inputs` / `condition_velocity`), combined as v_c + g (v_c - v_u).
4. VAE decode (tiled when asked), `(1 + x) / 2` clamped, `* 255` truncated to uint8, an H.264 yuv420p MP4
   at the recipe's fps (CRF 25, about imageio's quality 5) and a PNG strip of a few frames beside it, both
   written to a temporary name and renamed.

Several GPUs (torchrun): see `_parallel_mode`; context parallelism is Ulysses over the latent frames
(parallel/context_parallel.py), as the official `--context-parallel-size`.

Not done (see the official): guardrails, YAML sample files. An input that PyAV decodes
differently from PIL/imageio (JPEG chroma upsampling) gives slightly different condition pixels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import struct
import sys
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cosmos_engine.atomic import atomic_path, remove_stale_temporaries, unwritable_reason
from cosmos_engine.config.load import split_lora_spec, validate_infer
from cosmos_engine.config.schema import InferConfig, LoraConfig, ModelConfig
from cosmos_engine.convert import RUN_PREFIX, run_ema_file
from cosmos_engine.errors import CheckpointError, RecipeError
from cosmos_engine.infer import unipc
from cosmos_engine.infer.sample_files import IMAGE_SUFFIXES
from cosmos_engine.models import lora as lora_lib
from cosmos_engine.parallel.distributed import setup_distributed

log = logging.getLogger(__name__)

MP4_CRF = 25            # imageio-ffmpeg quality 5 -> libx264 CRF ~25 (reference §5.5, UNVERIFIED mapping)
PREVIEW_FRAMES = 4      # frames in the PNG strip


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------


def validate(cfg: InferConfig, where: str = "[infer]") -> None:
    """An [infer] table's rules (`config.load.validate_infer`) and its files: the input has a video stream
    and the output folder can be written, checked before any model is loaded; RecipeError naming the key
    and the absolute path."""
    validate_infer(cfg, lambda key: where)
    if cfg.input_path:
        path = Path(cfg.input_path).expanduser().absolute()
        problem = _input_problem(path) if path.is_file() else "file not found"
        if problem:
            raise RecipeError(f"{where}: infer.input_path = {cfg.input_path!r}: {problem} ({path})")
    problem = unwritable_reason(cfg.output_dir)
    if problem:
        raise RecipeError(f"{where}: infer.output_dir = {cfg.output_dir!r}: cannot write the outputs there ({problem})")


# ---------------------------------------------------------------------------------------------------------------------
# Condition frames
# ---------------------------------------------------------------------------------------------------------------------


def _as_official_uint8(frames: np.ndarray) -> torch.Tensor:
    """uint8 [t, H, W, 3] -> the official float [0, 1] (x / 255) -> uint8 by truncation of x * 255."""
    return torch.from_numpy(frames).float().div(255).mul(255).to(torch.uint8)


def _input_problem(path: Path) -> str | None:
    """Why FFmpeg cannot give frames of the input image or video `path`, or None."""
    try:
        with av.open(str(path)) as container:
            if container.streams.video:
                return None
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
    except av.FFmpegError as exc:
        return f"cannot be opened as an image or a video ({exc.strerror or exc})"
    return f"no video stream (it contains {', '.join(kinds)}); expected an image or a video"


def read_input_frames(path: str | Path, count: int) -> tuple[torch.Tensor, bool]:
    """(uint8 [t, H, W, 3] RGB, is_image): an image's only frame, or a video's LAST `count` frames (t <= count)."""
    path = Path(path).expanduser().absolute()
    is_image = path.suffix.lower() in IMAGE_SUFFIXES
    problem = _input_problem(path)
    if problem:
        raise RecipeError(f"{path}: {problem}")
    kept: deque[np.ndarray] = deque(maxlen=1 if is_image else count)
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                kept.append(frame.to_ndarray(format="rgb24"))
                if is_image:
                    break
    except (av.FFmpegError, StopIteration, IndexError) as exc:
        raise RecipeError(f"{path}: cannot decode the input {'image' if is_image else 'video'} ({exc})") from None
    if not kept:
        raise RecipeError(f"{path}: the input {'image' if is_image else 'video'} has no frames")
    return _as_official_uint8(np.stack(list(kept))), is_image


def resize_and_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [t, H, W, 3] -> uint8 [3, t, height, width], the official inference resize: scale by
    max(width/W, height/H) to (ceil(s H), ceil(s W)) (bilinear, antialiased, rounded back to uint8, as
    torchvision does on uint8 tensors), then centre-crop to (height, width) (torchvision's rounding)."""
    _, h0, w0, _ = frames.shape
    scale = max(width / w0, height / h0)
    rh, rw = math.ceil(scale * h0), math.ceil(scale * w0)
    x = frames.permute(0, 3, 1, 2)  # [t, 3, H, W]
    if (rh, rw) != (h0, w0):
        x = F.interpolate(x.float(), size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    top, left = round((rh - height) / 2.0), round((rw - width) / 2.0)
    return x[:, :, top:top + height, left:left + width].permute(1, 0, 2, 3).contiguous()


def condition_pixels(cfg: InferConfig) -> torch.Tensor:
    """The first 1 + 4(n-1) frames of the official conditioning video, uint8 [3, 1 + 4(n-1), h, w] (n >= 1)."""
    n = cfg.num_conditional_frames
    count = 1 + 4 * (n - 1)
    frames, is_image = read_input_frames(cfg.input_path, count)
    out = torch.zeros((3, count, cfg.height, cfg.width), dtype=torch.uint8)
    resized = resize_and_crop(frames, cfg.height, cfg.width)
    if is_image:
        out[:, :1] = resized  # frame 0 = the image, the others zeros
    else:
        t = resized.shape[1]
        out[:, :t] = resized  # the last `count` input frames, then repeats of the last one
        out[:, t:] = resized[:, -1:]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The guided velocity and the sampler
# ---------------------------------------------------------------------------------------------------------------------


def guided_velocity(net: torch.nn.Module, *, text_cond: torch.Tensor, text_uncond: torch.Tensor, guidance: float,
                    condition_x0: torch.Tensor, condition_mask: torch.Tensor, noise: torch.Tensor, fps: float,
                    conditional_frame_timestep: float | None = None,
                    split_branches: bool = False) -> unipc.VelocityFn:
    """The official Video2World velocity with classifier-free guidance, for `unipc_steps`.

    Per call: both branches conditioned as the official `denoise` does (condition frames replaced by their
    clean latent, optional per-frame timesteps), run as ONE DiT call of batch 2B (cond first, then uncond
    with the negative prompt's embedding), the condition frames' velocity replaced by noise - x0, then
    v = v_c + g (v_c - v_u). Shapes: x0, noise [B, C, T, H, W]; mask [B, 1, T, H, W]; texts [B, N, D].
    With `split_branches` (a torchrun job of 2 ranks) rank 0 evaluates the conditional branch and rank 1 the
    unconditional one, and an all-gather gives both ranks both velocities: half the DiT work per GPU.
    """
    batch = noise.shape[0]
    text = torch.cat([text_cond, text_uncond])
    mask2 = condition_mask.repeat(2, 1, 1, 1, 1)
    x0_2, noise2 = condition_x0.repeat(2, 1, 1, 1, 1), noise.repeat(2, 1, 1, 1, 1)
    _, _, _, h, w = noise.shape
    fps2 = torch.full((2 * batch,), float(fps), dtype=torch.float32, device=noise.device)
    # The padding mask is in pixels (the network resizes it to the latent grid): zeros, as the official batch.
    padding = torch.zeros((2 * batch, 1, 8 * h, 8 * w), dtype=torch.float32, device=noise.device)

    def velocity_split(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_in, t_in = unipc.condition_inputs(x, t, condition_x0, condition_mask, conditional_frame_timestep)
        mine = text_cond if dist.get_rank() == 0 else text_uncond
        v = net(x_B_C_T_H_W=x_in, timesteps_B_T=t_in, crossattn_emb=mine, condition_video_input_mask_B_C_T_H_W=condition_mask,
                fps=fps2[:batch], padding_mask=padding[:batch])
        v = unipc.condition_velocity(v, condition_x0, condition_mask, noise).contiguous()
        v_cond, v_uncond = torch.empty_like(v), torch.empty_like(v)
        dist.all_gather([v_cond, v_uncond], v)
        return v_cond + guidance * (v_cond - v_uncond)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_in, t_in = unipc.condition_inputs(x, t, condition_x0, condition_mask, conditional_frame_timestep)
        v = net(x_B_C_T_H_W=x_in.repeat(2, 1, 1, 1, 1), timesteps_B_T=t_in.repeat(2, 1), crossattn_emb=text,
                condition_video_input_mask_B_C_T_H_W=mask2, fps=fps2, padding_mask=padding)
        v_cond, v_uncond = unipc.condition_velocity(v, x0_2, mask2, noise2).chunk(2)
        return v_cond + guidance * (v_cond - v_uncond)

    return velocity_split if split_branches else velocity


def sample_latent(net: torch.nn.Module, cfg: InferConfig, *, text_cond: torch.Tensor, text_uncond: torch.Tensor,
                  condition_x0: torch.Tensor, progress: bool = True, split_branches: bool = False) -> torch.Tensor:
    """The final latent [1, C, T', h, w] float32 of one sample. `condition_x0` [1, C, T', h, w] (the latent's
    shape) holds the clean latent of the condition frames in its first n frames; the rest is ignored."""
    device = condition_x0.device
    shape = tuple(condition_x0.shape)
    latent_t = shape[2]
    noise = unipc.initial_noise(shape, cfg.seed, device)
    mask = torch.zeros((1, 1, latent_t, shape[3], shape[4]), dtype=torch.float32, device=device)
    mask[:, :, :cfg.num_conditional_frames] = 1.0
    variant = unipc.SAMPLER_VARIANTS[cfg.sampler]
    schedule = unipc.flow_schedule(cfg.num_steps, cfg.shift, karras_sigmas=variant.karras_sigmas)
    velocity = guided_velocity(net, text_cond=text_cond, text_uncond=text_uncond, guidance=cfg.guidance,
                               condition_x0=condition_x0.float(), condition_mask=mask, noise=noise, fps=cfg.fps,
                               conditional_frame_timestep=variant.conditional_frame_timestep,
                               split_branches=split_branches)
    from tqdm import tqdm

    bar = tqdm(total=schedule.num_steps, desc=f"{cfg.name}", unit="step", file=sys.stderr, disable=not progress,
               leave=False)
    latent = noise
    with torch.no_grad(), bar:
        for step in unipc.unipc_steps(velocity, noise, schedule):
            latent = step.latent
            bar.update(1)
    return latent


# ---------------------------------------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------------------------------------


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """Decoded video [1, 3, T, H, W] about [-1, 1] -> uint8 [T, H, W, 3]: (1 + x) / 2 clamped, * 255 truncated."""
    x = ((1.0 + video[0].float()) / 2.0).clamp(0, 1).mul(255).to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def write_mp4(path: Path, frames: np.ndarray, fps: float, crf: int = MP4_CRF) -> Path:
    """uint8 [T, H, W, 3] RGB -> H.264 yuv420p MP4 at `fps`, written to a temporary name then renamed."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    _, height, width, _ = frames.shape
    with atomic_path(Path(path)) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return Path(path)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A minimal 8-bit RGB PNG of uint8 [H, W, 3]."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(rgb, dtype=np.uint8))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_preview(path: Path, frames: np.ndarray, count: int = PREVIEW_FRAMES) -> Path:
    """A PNG strip of `count` evenly spaced frames (first and last included), side by side."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(png_bytes(np.concatenate([frames[i] for i in picks], axis=1)))
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferResult:
    name: str
    video_path: Path
    preview_path: Path
    latent: torch.Tensor   # [1, C, T', h, w] float32, on the CPU
    frames: np.ndarray     # uint8 [T, H, W, 3], what the MP4 holds before compression


def _checkpoint(model_cfg: ModelConfig, cfg: InferConfig, trust_checkpoint: bool) -> str:
    path = cfg.checkpoint_path or model_cfg.checkpoint
    if not path:
        raise RecipeError("infer.checkpoint_path is empty (and so is model.checkpoint): give the post-trained DiT "
                          "weights, e.g. \"run:RECIPE.toml\" (that run's latest converted EMA file) or "
                          "RUN/checkpoints/iter_000001000/model_ema_bf16.pt")
    if path.startswith(RUN_PREFIX):
        return str(run_ema_file(path[len(RUN_PREFIX):], trust_checkpoint))
    if not Path(path).expanduser().exists():
        key = "infer.checkpoint_path" if cfg.checkpoint_path else "model.checkpoint"
        raise CheckpointError(f"{Path(path).expanduser().absolute()}: no such checkpoint file or folder ({key})")
    return str(Path(path).expanduser())


def _parallel_mode(world_size: int, samples: Mapping[str, InferConfig], num_heads: int, patch_temporal: int,
                   context_parallel: bool) -> str:
    """How the ranks of a torchrun job share the work:
    "single" (one process); "context" (every sample's latent frames split over all ranks: asked for, or
    more than 2 ranks and fewer samples than ranks); "branches" (2 ranks: conditional and unconditional
    branch each); "samples" (more ranks: every world_size-th sample each)."""
    if world_size == 1:
        if context_parallel:
            log.warning("--context-parallel has no effect in one process; launch with torchrun --nproc_per_node N")
        return "single"
    if context_parallel or (world_size > 2 and len(samples) < world_size):
        def token_frames(cfg: InferConfig) -> int:  # what the DiT splits: latent frames / patch_temporal
            return (1 + (cfg.num_frames - 1) // 4) // patch_temporal

        problems = [f"sample {name!r}: {token_frames(cfg)} latent frames" for name, cfg in samples.items()
                    if token_frames(cfg) % world_size]
        if num_heads % world_size:
            problems.append(f"the DiT's {num_heads} heads")
        if not problems:
            return "context"
        why = (f"context parallelism over {world_size} ranks needs latent frame counts and heads divisible by "
               f"{world_size}: " + "; ".join(problems))
        if context_parallel:
            raise RecipeError(why)
        log.warning("%s; splitting the samples instead", why)
    return "branches" if world_size == 2 else "samples"


def run_infer(model_cfg: ModelConfig, samples: Mapping[str, InferConfig] | InferConfig, *,
              device: torch.device | str | None = None, progress: bool = True,
              trust_checkpoint: bool = False, context_parallel: bool = False,
              lora_cfg: LoraConfig | None = None) -> list[InferResult]:
    """Generate every sample and write `<output_dir>/<name>.mp4` and `<name>.png`; returns what was written.

    All samples must use the same DiT weights (one checkpoint is loaded). Prompt embeddings are cached in
    `<output_dir>/.cache/text` (`data.text_embeddings`): the text encoder is loaded only when a prompt or
    negative prompt is not there yet. The tiny flavor's random text encoder is written once to
    `<output_dir>/.cache/tiny_reason1` (seeded: the one post-training used).
    Under torchrun the ranks share the work as `_parallel_mode` says; `context_parallel` asks for every
    sample's latent frames to be split over all ranks.
    LoRA: a checkpoint with PEFT-injected keys (a LoRA run's files) is merged as it loads, with `lora_cfg`'s
    alpha and rank (default the official values); the adapters of `infer.lora` ("PATH[:SCALE]" PEFT folders,
    the same for every sample) are applied unmerged on top, all active at once (models/lora.py)."""
    from cosmos_engine.models.flavors import dit_config, parameter_dtype
    from cosmos_engine.models.state_dict import build_dit, check_finite
    from cosmos_engine.data.encoders import build_vae, text_encoder_source
    from cosmos_engine.data.text_embeddings import cached_embeddings

    if isinstance(samples, InferConfig):
        samples = {samples.name: samples}
    samples = {name: dataclasses.replace(cfg, name=name) for name, cfg in samples.items()}
    if not samples:
        raise RecipeError("no samples to generate")
    for cfg in samples.values():
        validate(cfg, f"sample {cfg.name!r}")
    checkpoints = {_checkpoint(model_cfg, cfg, trust_checkpoint) for cfg in samples.values()}
    if len(checkpoints) != 1:
        raise RecipeError(f"the samples name {len(checkpoints)} different checkpoints; run them separately")
    (checkpoint,) = checkpoints
    weights = {cfg.weights for cfg in samples.values()}
    if len(weights) != 1:
        raise RecipeError("the samples ask for different infer.weights; run them separately")
    adapter_sets = {cfg.lora for cfg in samples.values()}
    if len(adapter_sets) != 1:
        raise RecipeError("the samples ask for different infer.lora adapters; run them separately")
    adapters = [split_lora_spec(spec, "infer.lora") for spec in adapter_sets.pop()]
    for path, _ in adapters:  # before any model is loaded
        lora_lib.read_adapter(path)
    dist_info = setup_distributed()
    dit_cfg = dit_config(model_cfg.flavor)
    mode = _parallel_mode(dist_info.world_size, samples, dit_cfg.num_heads, dit_cfg.patch_temporal, context_parallel)
    if dist_info.world_size > 1:
        log.info("%d ranks: %s", dist_info.world_size, {"context": "each sample's latent frames split over all ranks",
                                                        "branches": "conditional / unconditional branch per rank",
                                                        "samples": "every world_size-th sample per rank"}[mode])
    device = torch.device(device) if device is not None else dist_info.device
    dtype = parameter_dtype(model_cfg.dtype)

    # 1. Text embeddings (cond and negative) of every sample, by all ranks together (rank 0 encodes what the
    # cache lacks): the text encoder is loaded, and freed, only for prompts not cached yet.
    cache = Path(next(iter(samples.values())).output_dir).expanduser() / ".cache"
    texts = [c.prompt for c in samples.values()] + [c.negative_prompt for c in samples.values()]
    embeddings, _ = cached_embeddings(texts, cache / "text", text_encoder_source(model_cfg, cache / "tiny_reason1"),
                                      device)

    split_branches = mode == "branches"
    if mode == "samples":
        names = list(samples)[dist_info.rank::dist_info.world_size]
        samples = {name: samples[name] for name in names}
        if not samples:
            return []

    # 2. Condition latents.
    vae = build_vae(model_cfg, device)
    condition: dict[str, torch.Tensor] = {}
    for name, cfg in samples.items():
        latent_shape = (1, vae.config.z_dim, 1 + (cfg.num_frames - 1) // 4, cfg.height // 8, cfg.width // 8)
        x0 = torch.zeros(latent_shape, dtype=torch.float32, device=device)
        if cfg.num_conditional_frames > 0:
            pixels = condition_pixels(cfg).to(device)
            video = (pixels.float() / 127.5 - 1.0)[None].to(vae.dtype)
            encoded = vae.encode(video, tiled=model_cfg.vae_tiled).float()
            x0[:, :, :encoded.shape[2]] = encoded
        condition[name] = x0

    # 3. Sampling, 4. decoding and files.
    net = build_dit(dit_cfg, checkpoint, device=device, dtype=dtype, weights=weights.pop(),
                    trust_checkpoint=trust_checkpoint, lora=lora_cfg).eval().requires_grad_(False)
    check_finite(net, checkpoint)
    if adapters:
        lora_lib.apply_adapters(net, adapters).to(device)
        check_finite(net, ", ".join(str(path) for path, _ in adapters))
    if mode == "context":
        net.enable_context_parallel(dist.group.WORLD)
    results = []
    for name, cfg in samples.items():
        latent = sample_latent(net, cfg, text_cond=embeddings[cfg.prompt][None].to(device),
                               text_uncond=embeddings[cfg.negative_prompt][None].to(device), condition_x0=condition[name],
                               progress=progress and dist_info.is_main, split_branches=split_branches)
        if mode in ("branches", "context") and not dist_info.is_main:
            continue  # every rank holds the same latent; rank 0 decodes and writes it
        video = vae.decode(latent.to(vae.dtype), tiled=cfg.tiled_decode or model_cfg.vae_tiled)
        frames = to_uint8_frames(video)
        out_dir = Path(cfg.output_dir).expanduser()
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)  # what a killed earlier infer left half-written
        video_path = write_mp4(out_dir / f"{name}.mp4", frames, cfg.fps)
        preview_path = write_preview(out_dir / f"{name}.png", frames)
        log.info("%s: %d frames %dx%d at %g fps -> %s", name, len(frames), cfg.width, cfg.height, cfg.fps, video_path)
        results.append(InferResult(name, video_path, preview_path, latent.cpu(), frames))
    return results


__all__ = [
    "InferResult",
    "condition_pixels",
    "guided_velocity",
    "png_bytes",
    "read_input_frames",
    "resize_and_crop",
    "run_infer",
    "sample_latent",
    "to_uint8_frames",
    "validate",
    "write_mp4",
    "write_preview",
]
