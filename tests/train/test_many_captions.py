"""400 videos with 400 distinct captions: the training data path (cached windows, lazily read caption
embeddings, the resumable loader, `TrainingData` batches) keeps host memory bounded whatever the number of
captions. The entries are written directly (no videos are encoded): what is measured is the reading side."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cosmos_engine.data.cache import CachedWindowDataset, LatentCache, window_starts
from cosmos_engine.data.dataset import PyAVDecoder, VideoRecord, VideoWindowDataset, WindowSampler, build_loader
from cosmos_engine.data.text_embeddings import TextEmbeddings, TextEmbeddingStore
from cosmos_engine.train.data import TrainingData

VIDEOS, FRAMES, NUM_FRAMES, SIDE = 400, 9, 9, 16  # one window per video
TEXT_SHAPE = (512, 512)  # bf16: 512 KiB per caption, 200 MiB for all of them
BOUND = 48 * 2**20  # RSS growth allowed while every caption is read several times


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_400_distinct_captions_train_with_bounded_host_memory(tmp_path: Path):
    records = [VideoRecord(tmp_path / f"video_{i:03d}.mp4", f"caption number {i}: a teal robot, take {i}", FRAMES,
                           30.0, hashlib.sha256(str(i).encode()).hexdigest()) for i in range(VIDEOS)]
    videos = VideoWindowDataset(records, NUM_FRAMES, SIDE, SIDE, PyAVDecoder())
    cache, vae_identity = LatentCache(tmp_path / "dataset"), "test-vae"
    texts = TextEmbeddingStore(tmp_path / "text", "test-encoder")
    gen = torch.Generator().manual_seed(0)
    latent, embedding = torch.randn(16, 3, 2, 2, generator=gen), torch.randn(TEXT_SHAPE, generator=gen).bfloat16()
    for record in records:
        for start in window_starts(FRAMES, NUM_FRAMES, 8, 256):
            cache.store(cache.latent_key(record, start, videos, vae_identity), latent)
        embedding[0, :2] = torch.tensor(divmod(int(record.path.stem[-3:]), 100))  # which caption this is
        texts.store(record.prompt, embedding)

    dataset = CachedWindowDataset(cache, videos, vae_identity, window_stride=8, max_cached_windows=256)
    sampler = WindowSampler(dataset.all_starts(), seed=0)
    loader = build_loader(dataset, sampler, batch_size=4, num_workers=0)
    data = TrainingData(loader, TextEmbeddings(texts, [r.prompt for r in records]), None, torch.device("cpu"),
                        (3, 2, 2))
    for _ in range(10):  # warm-up: the loader's and the allocator's own first allocations
        next(data)
    before, seen = rss_bytes(), set()
    for _ in range(3 * VIDEOS // 4):  # 3 epochs of 400 videos, 4 per batch
        x0, text = next(data)
        assert x0.shape == (4, 16, 3, 2, 2) and text.shape == (4, *TEXT_SHAPE) and torch.isfinite(text).all()
        seen.update(map(tuple, text[:, 0, :2].tolist()))
    growth = rss_bytes() - before
    assert len(seen) == VIDEOS  # every caption's own embedding was read
    assert growth < BOUND, f"RSS grew by {growth / 2**20:.0f} MiB reading 400 captions of 512 KiB, 3 times each"
