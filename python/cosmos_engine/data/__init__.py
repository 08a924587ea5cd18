"""Training data: `prepare` (folder -> dataset), decoders (PyAV CPU, DALI GPU), windows, sampler, cache.

The trainer needs one call, `build_training_loader`, which picks the path from the [data] table:
* cache = "windows": make sure every fixed window's VAE latent and every caption's embedding is cached
  (encoding only what is missing), then stream cached latents. Batches hold `latent`, `prompt`, ...;
  `TrainingData.text_embeddings` maps each caption to its embedding, loaded once.
* cache = "off": stream decoded windows from any start; batches hold `video` float32 [B, 3, T, H, W]
  in [-1, 1] on the device, `prompt`, ...; the trainer runs the frozen VAE and text encoder itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cosmos_engine.config.schema import DataConfig
from cosmos_engine.data.cache import BuildStats, CachedWindowDataset, LatentCache, TextEncoder, VideoEncoder
from cosmos_engine.data.dataset import (
    TimedLoader, VideoWindowDataset, WindowSampler, build_loader, load_records, make_decoder,
)

__all__ = ["TrainingData", "build_training_loader", "LatentCache", "TimedLoader", "VideoWindowDataset",
           "WindowSampler", "build_loader", "load_records", "make_decoder"]


@dataclass
class TrainingData:
    loader: TimedLoader
    text_embeddings: dict[str, torch.Tensor] | None  # caption -> [L, D]; None when cache = "off"
    cache_stats: BuildStats | None


def build_training_loader(cfg: DataConfig, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                          vae: VideoEncoder | None = None, text_encoder: TextEncoder | None = None,
                          device: torch.device | str = "cpu") -> TrainingData:
    """The endless, resumable batch stream for one rank (see the module docstring).

    With cache = "windows", `vae` and `text_encoder` are required and run on `device` for the entries that
    are missing. With several ranks (torch.distributed initialized), each rank encodes its share of the
    missing entries and all wait at a barrier before reading the cache.
    """
    device = torch.device(device)
    windows = VideoWindowDataset(load_records(cfg.dataset_dir), cfg.num_frames, cfg.height, cfg.width,
                                 make_decoder(cfg.decoder))
    if cfg.cache == "off":
        sampler = WindowSampler(windows.all_starts(), seed=seed, rank=rank, world_size=world_size)
        loader = build_loader(windows, sampler, batch_size=batch_size, num_workers=cfg.num_workers, device=device)
        return TrainingData(loader, None, None)
    if vae is None or text_encoder is None:
        raise ValueError('cache = "windows" needs the VAE and the text encoder to fill the cache')
    cache = LatentCache(cfg.dataset_dir)
    stats = cache.build(windows, vae, text_encoder, device=device, num_workers=cfg.num_workers, rank=rank,
                        world_size=world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    cached = CachedWindowDataset(cache, windows, vae.identity)
    sampler = WindowSampler(cached.all_starts(), seed=seed, rank=rank, world_size=world_size)
    loader = build_loader(cached, sampler, batch_size=batch_size, num_workers=cfg.num_workers, device=device)
    embeddings = cache.text_embeddings([r.prompt for r in windows.records], text_encoder.identity)
    return TrainingData(loader, embeddings, stats)
