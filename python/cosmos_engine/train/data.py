"""What a training step consumes: clean VAE latents and text embeddings, from the cache or computed online.

`cache = "windows"` (default): before the first step the cached windows of every video (starts at most
`window_stride` frames apart over the whole valid range, at most `max_cached_windows` per video) and every
caption are encoded once (`data.cache.LatentCache.build`), and the steps read latents from disk and the
caption's embedding from memory, so neither the VAE nor the text encoder runs inside a step. Each sample's
start is drawn uniformly among its video's cached starts (`window_stride = 1`: among all starts, as below).
`cache = "off"` (the official behaviour): each step decodes a window from a uniformly random start and runs
the frozen VAE on it under `inference_mode`; captions are still encoded once per run (the NeMo set has a
single caption).

The frozen encoders: `[model] vae_path` / `text_encoder_path`; left empty, the tiny flavor uses a seeded
random tiny VAE and a tiny random Reason1 stand-in written into the dataset's cache folder, so the tiny
recipe needs no download. The 2B flavor requires both paths.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

from cosmos_engine.config.schema import DataConfig, ModelConfig, TrainConfig
from cosmos_engine.data.cache import BuildStats, CachedWindowDataset, LatentCache
from cosmos_engine.data.dataset import VideoWindowDataset, WindowSampler, build_loader, load_records, make_decoder
from cosmos_engine.errors import RecipeError
from cosmos_engine.models.flavors import parameter_dtype, vae_config
from cosmos_engine.models.text_encoder import TextEncoder, tiny_encoder
from cosmos_engine.models.wan_vae import WanVAE, load_vae
from cosmos_engine.train.stop_signals import ignore_stop_signals

log = logging.getLogger(__name__)


def build_vae(model_cfg: ModelConfig, device: torch.device) -> WanVAE:
    dtype = parameter_dtype(model_cfg.dtype)
    if model_cfg.vae_path:
        return load_vae(Path(model_cfg.vae_path).absolute(), vae_config(model_cfg.flavor), device=device, dtype=dtype)
    if model_cfg.flavor != "tiny":
        raise RecipeError(f"model.vae_path is empty; the {model_cfg.flavor!r} flavor needs the Wan2.1 VAE weights "
                          "(tokenizer.pth of Cosmos-Predict2.5-2B)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random tiny VAE every time, so its cache identity is stable
        vae = WanVAE(vae_config("tiny"))
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_text_encoder(model_cfg: ModelConfig, dataset_dir: Path, device: torch.device) -> TextEncoder:
    dtype = parameter_dtype(model_cfg.dtype)
    if model_cfg.text_encoder_path:
        return TextEncoder(Path(model_cfg.text_encoder_path).absolute(), device=device, dtype=dtype)
    if model_cfg.flavor != "tiny":
        raise RecipeError(f"model.text_encoder_path is empty; the {model_cfg.flavor!r} flavor needs a local copy "
                          "of nvidia/Cosmos-Reason1-7B")
    folder = dataset_dir / "cache" / "tiny_reason1"
    if not dist.is_initialized() or dist.get_rank() == 0:
        tiny_encoder(folder, seed=0)
    if dist.is_initialized():
        dist.barrier()
    return TextEncoder(folder, device=device, dtype=dtype)


class LatentEncoder:
    """The frozen VAE as the cache and the online path use it: `encode(video)` with the recipe's tiling
    switch (`[model] vae_tiled`); tiled and untiled latents agree to float rounding, so they share an identity."""

    def __init__(self, vae: WanVAE, tiled: bool):
        self.vae, self.tiled = vae, tiled
        self.dtype = vae.dtype

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        c = self.vae.config
        return (c.z_dim, 1 + (num_frames - 1) // c.temporal_factor, height // c.spatial_factor,
                width // c.spatial_factor)

    @property
    def identity(self) -> str:
        return self.vae.identity

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(video, tiled=self.tiled)


class TrainingData:
    """Endless (x0 [B, C, T, H, W] float32, text [B, N, C_text]) batches for one rank, resumable."""

    def __init__(self, loader, text_by_prompt: dict[str, torch.Tensor], vae: LatentEncoder | None, device: torch.device,
                 latent_thw: tuple[int, int, int]):
        self.loader = loader
        self.text_by_prompt = text_by_prompt
        self.vae = vae  # only with cache = "off"
        self.device = device
        self.latent_thw = latent_thw
        self.text_tokens = next(iter(text_by_prompt.values())).shape[0]

    @property
    def tokens_per_sample(self) -> int:
        t, h, w = self.latent_thw
        return t * (h // 2) * (w // 2)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch (with the cache off this includes the online VAE encode, which the trainer's
        data-wait time therefore counts)."""
        batch = next(self.loader)
        if self.vae is not None:
            with torch.inference_mode():
                x0 = self.vae.encode(batch["video"].to(self.device, self.vae.dtype))
            x0 = x0.float().clone()  # leave inference mode: the step needs a normal tensor
        else:
            x0 = batch["latent"].to(self.device).float()
        text = torch.stack([self.text_by_prompt[p] for p in batch["prompt"]]).to(self.device)
        return x0, text

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def fill_cache(model_cfg: ModelConfig, data_cfg: DataConfig, device: torch.device, *, rank: int = 0,
               world_size: int = 1) -> tuple[VideoWindowDataset, LatentEncoder, str, BuildStats]:
    """Encode what a run of this recipe reads before its first step and is not cached yet: every window and
    caption (`cache = "windows"`), or the captions only (`cache = "off"`). Used by training and by
    `cosmos-engine prepare --cache RECIPE`. Returns the video windows, the VAE, the text encoder's identity
    (the encoder itself is dropped here, before the DiT is built) and what the build did. Several ranks
    share the work; the caller waits for all of them before reading."""
    dataset_dir = Path(data_cfg.dataset_dir).absolute()
    videos = VideoWindowDataset(load_records(dataset_dir), data_cfg.num_frames, data_cfg.height, data_cfg.width,
                                make_decoder(data_cfg.decoder))
    vae = LatentEncoder(build_vae(model_cfg, device), model_cfg.vae_tiled)
    text_encoder = build_text_encoder(model_cfg, dataset_dir, device)
    cache = LatentCache(dataset_dir)
    if data_cfg.cache == "windows":
        stats = cache.build(videos, vae, text_encoder, window_stride=data_cfg.window_stride,
                            max_cached_windows=data_cfg.max_cached_windows, device=device,
                            num_workers=data_cfg.num_workers, rank=rank, world_size=world_size,
                            worker_init_fn=ignore_stop_signals)
    else:  # captions only: they are encoded once per run whatever the setting
        stats = cache.build_text(videos, text_encoder, rank=rank, world_size=world_size)
    return videos, vae, text_encoder.identity, stats


def build_training_data(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, seed: int, rank: int,
                        world_size: int, device: torch.device) -> TrainingData:
    videos, vae, text_identity, _ = fill_cache(model_cfg, data_cfg, device, rank=rank, world_size=world_size)
    if dist.is_initialized():
        dist.barrier()
    cache = LatentCache(Path(data_cfg.dataset_dir).absolute())
    text_by_prompt = cache.text_embeddings([r.prompt for r in videos.records], text_identity)
    if data_cfg.cache == "windows":
        dataset = CachedWindowDataset(cache, videos, vae.identity, window_stride=data_cfg.window_stride,
                                      max_cached_windows=data_cfg.max_cached_windows)
        online_vae = None
    else:
        dataset, online_vae = videos, vae
    sampler = WindowSampler(dataset.all_starts(), seed=seed, rank=rank, world_size=world_size)
    loader = build_loader(dataset, sampler, batch_size=train_cfg.batch_size, num_workers=data_cfg.num_workers,
                          device=device, worker_init_fn=ignore_stop_signals)
    s = vae_config(model_cfg.flavor).spatial_factor
    t = vae_config(model_cfg.flavor).temporal_factor
    latent_thw = (1 + (data_cfg.num_frames - 1) // t, data_cfg.height // s, data_cfg.width // s)
    log.info("training data: %d videos, cache=%s, %d starts to draw from, latent %s, %d text tokens",
             len(videos.records), data_cfg.cache, sum(len(s) for s in sampler.starts), latent_thw,
             next(iter(text_by_prompt.values())).shape[0])
    return TrainingData(loader, text_by_prompt, online_vae, device, latent_thw)
