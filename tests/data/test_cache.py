"""The latent / text-embedding cache, with small deterministic stand-in encoders that count their calls.

The stand-ins only have to be deterministic functions of their input with the real output layout; the
cache logic (keys, invalidation, corruption, atomic files) is what is under test.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cosmos_engine.data.cache import CachedWindowDataset, LatentCache, LatentKey, window_starts
from cosmos_engine.data.dataset import VideoWindowDataset, WindowSampler, build_loader, load_records
from cosmos_engine.data.decode_pyav import PyAVDecoder
from cosmos_engine.data.prepare import prepare_synthetic
from cosmos_engine.data.synthetic import render_clip
from cosmos_engine.data.video_io import encode_video, to_unit_range
from cosmos_engine.errors import DatasetError

N, H, W = 9, 32, 48
CLIP_FRAMES = 25  # -> windows at 0, 8, 16


class CountingVAE:
    """[B, 3, T, H, W] -> [B, 3, 1 + (T - 1) // 4, H / 8, W / 8]: every 4th frame, 8x8 average pooled."""

    def __init__(self, identity: str = "stand-in-vae/v1") -> None:
        self.identity, self.calls = identity, 0

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.avg_pool3d(video[:, :, ::4], (1, 8, 8))


class CountingTextEncoder:
    """B prompts -> [B, 8, 16], a pseudo-random function of each prompt."""

    def __init__(self, identity: str = "stand-in-text/v1") -> None:
        self.identity, self.calls = identity, 0

    def encode(self, prompts: list[str]) -> torch.Tensor:
        self.calls += 1
        seeds = [int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) for p in prompts]
        return torch.stack([torch.randn(8, 16, generator=torch.Generator().manual_seed(s)) for s in seeds])


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    out = tmp_path / "dataset"
    prepare_synthetic(out, count=3, seed=1, frames=CLIP_FRAMES, height=H, width=W)
    (out / "metas" / "synthetic_0002.txt").write_text("A video of sks teal robot, waving.")
    return out


def windows_of(dataset_dir: Path) -> VideoWindowDataset:
    return VideoWindowDataset(load_records(dataset_dir), N, H, W, PyAVDecoder())


def build(dataset_dir: Path, vae=None, text=None):
    vae, text = vae or CountingVAE(), text or CountingTextEncoder()
    stats = LatentCache(dataset_dir).build(windows_of(dataset_dir), vae, text)
    return stats, vae, text


def test_window_starts_cover_every_frame_evenly():
    assert window_starts(93, 93) == [0]
    assert window_starts(94, 93) == [0, 1]
    assert window_starts(25, 9) == [0, 8, 16]
    for frames in range(9, 80):
        starts = window_starts(frames, 9)
        covered = {f for s in starts for f in range(s, s + 9)}
        assert starts[0] == 0 and starts[-1] == frames - 9 and covered == set(range(frames))
        assert len(starts) == -(-frames // 9)


def test_second_epoch_and_second_build_call_no_encoder(dataset_dir):
    stats, vae, text = build(dataset_dir)
    assert (vae.calls, text.calls) == (9, 2) and (stats.latents_encoded, stats.texts_encoded) == (9, 2)

    windows = windows_of(dataset_dir)
    cached = CachedWindowDataset(LatentCache(dataset_dir), windows, vae.identity)
    loader = build_loader(cached, WindowSampler(cached.all_starts(), seed=0), batch_size=1, num_workers=0)
    for _ in range(2 * len(cached)):  # two epochs
        batch = next(loader)
        index, start = int(batch["video_index"]), int(batch["start"])
        assert start in (0, 8, 16)
        expected = vae.encode(to_unit_range(windows[(index, start)]["video"][None]))[0]
        assert torch.equal(batch["latent"][0], expected)
    assert (vae.calls - 2 * len(cached), text.calls) == (9, 2)  # only the check above called the VAE

    again, vae2, text2 = build(dataset_dir)
    assert (vae2.calls, text2.calls) == (0, 0) and again.hits == 11


def test_editing_a_video_invalidates_exactly_its_entries(dataset_dir):
    build(dataset_dir)
    edited = dataset_dir / "videos" / "synthetic_0001.mp4"
    edited.write_bytes(encode_video(render_clip(99, 0, CLIP_FRAMES, H, W), 16))
    stats, vae, text = build(dataset_dir)
    assert (vae.calls, text.calls) == (3, 0)
    assert stats.pruned == 1  # the edited video's old latents are gone
    assert len(list((dataset_dir / "cache" / "latents").iterdir())) == 3


def test_changing_an_encoder_identity_invalidates_only_its_entries(dataset_dir):
    build(dataset_dir)
    _, vae, text = build(dataset_dir, vae=CountingVAE("stand-in-vae/v2"))
    assert (vae.calls, text.calls) == (9, 0)
    _, vae, text = build(dataset_dir, text=CountingTextEncoder("stand-in-text/v2"))
    assert (vae.calls, text.calls) == (0, 2)


def test_unreadable_or_foreign_entries_are_recomputed_with_a_warning(dataset_dir, caplog):
    build(dataset_dir)
    files = sorted((dataset_dir / "cache" / "latents").rglob("*.safetensors"))
    truncated, garbage, foreign = files[0], files[1], files[2]
    truncated.write_bytes(truncated.read_bytes()[:-7])
    garbage.write_bytes(b"not a safetensors file")
    shutil.copyfile(files[3], foreign)  # a valid file, but written for another window
    with caplog.at_level(logging.WARNING):
        stats, vae, _ = build(dataset_dir)
    assert vae.calls == 3 and stats.corrupt == 3
    for path, why in ((truncated, "unreadable"), (garbage, "unreadable"), (foreign, "written for another key")):
        assert f"{path} is {why}" in caplog.text
    assert build(dataset_dir)[1].calls == 0


def test_folder_and_non_finite_entries_are_recomputed_with_a_warning(dataset_dir, caplog):
    build(dataset_dir)
    files = sorted((dataset_dir / "cache").rglob("*.safetensors"))
    nan_latent, inf_text, folder = files[0], files[-1], files[1]
    for path, bad in ((nan_latent, float("nan")), (inf_text, float("inf"))):
        tensors = load_file(str(path))
        tensors["tensor"].view(-1)[:3] = bad
        with safe_open(str(path), framework="pt") as f:
            save_file(tensors, str(path), metadata=f.metadata())
    folder.unlink()
    (folder / "inside").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        stats, vae, text = build(dataset_dir)
    assert (vae.calls, text.calls, stats.corrupt) == (2, 1, 3)
    assert f"{nan_latent} is poisoned: 3 of its" in caplog.text and f"{inf_text} is poisoned: 3 of its" in caplog.text
    assert f"{folder} is a folder, not a file" in caplog.text
    assert folder.is_file() and build(dataset_dir)[0].hits == 11


def test_reading_a_non_finite_entry_names_it(dataset_dir):
    key = LatentKey("0" * 64, 0, N, H, W, "stand-in-vae/v1")
    cache = LatentCache(dataset_dir)
    cache.store(key, torch.zeros(3, 3, 4, 6))
    save_file({"tensor": torch.full((3, 3, 4, 6), float("nan"))}, str(cache.path(key)), metadata=key.metadata())
    with pytest.raises(DatasetError, match=f"{key.relpath()}: cache entry poisoned: 216 of its 216 values are NaN"):
        cache.load(key)


def test_reading_a_missing_entry_names_it(dataset_dir):
    key = LatentKey("0" * 64, 0, N, H, W, "stand-in-vae/v1")
    with pytest.raises(DatasetError, match=f"{key.relpath()}: cache entry missing"):
        LatentCache(dataset_dir).load(key)


def test_captions_alone_for_the_online_path_and_their_embeddings(dataset_dir):
    cache, text = LatentCache(dataset_dir), CountingTextEncoder()
    stats = cache.build_text(windows_of(dataset_dir), text)
    assert (stats.texts_encoded, stats.latents_encoded, text.calls) == (2, 0, 2)
    assert not (dataset_dir / "cache" / "latents").exists()
    prompts = [r.prompt for r in load_records(dataset_dir)]
    embeddings = cache.text_embeddings(prompts, text.identity)
    assert set(embeddings) == {"A video of sks teal robot.", "A video of sks teal robot, waving."}
    for prompt, embedding in embeddings.items():
        assert torch.equal(embedding, CountingTextEncoder().encode([prompt])[0])
    assert cache.build_text(windows_of(dataset_dir), text).texts_encoded == 0


def test_a_build_removes_temporaries_of_killed_writers(dataset_dir):
    build(dataset_dir)
    folder = next(p.parent for p in (dataset_dir / "cache").rglob("*.safetensors"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = folder / f".start000000.safetensors.{dead.pid}.0123456789ab.tmp"
    stale.write_bytes(b"half an entry")
    live = folder / f".start000008.safetensors.{os.getpid()}.0123456789ab.tmp"  # a builder still writing
    live.write_bytes(b"being written")
    build(dataset_dir)
    assert not stale.exists() and live.exists()
