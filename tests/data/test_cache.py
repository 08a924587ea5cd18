"""The latent cache, with a small deterministic stand-in VAE that counts its calls (the caption side is
tests/data/test_text_embeddings.py).

The stand-in only has to be a deterministic function of its input with the real output layout; the cache
logic (keys, invalidation, corruption, atomic files) is what is under test.
"""

from __future__ import annotations

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


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    out = tmp_path / "dataset"
    prepare_synthetic(out, count=3, seed=1, frames=CLIP_FRAMES, height=H, width=W)
    (out / "metas" / "synthetic_0002.txt").write_text("A video of sks teal robot, waving.")
    return out


def windows_of(dataset_dir: Path) -> VideoWindowDataset:
    return VideoWindowDataset(load_records(dataset_dir), N, H, W, PyAVDecoder())


def build(dataset_dir: Path, vae=None, decoder=None):
    vae = vae or CountingVAE()
    windows = VideoWindowDataset(load_records(dataset_dir), N, H, W, decoder or PyAVDecoder())
    return LatentCache(dataset_dir).build(windows, vae), vae


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
    stats, vae = build(dataset_dir)
    assert vae.calls == 9 and stats.latents_encoded == 9

    windows = windows_of(dataset_dir)
    cached = CachedWindowDataset(LatentCache(dataset_dir), windows, vae.identity)
    loader = build_loader(cached, WindowSampler(cached.all_starts(), seed=0), batch_size=1, num_workers=0)
    for _ in range(2 * len(cached)):  # two epochs
        batch = next(loader)
        index, start = int(batch["video_index"]), int(batch["start"])
        assert start in (0, 8, 16)
        expected = vae.encode(to_unit_range(windows[(index, start)]["video"][None]))[0]
        assert torch.equal(batch["latent"][0], expected)
    assert vae.calls - 2 * len(cached) == 9  # only the check above called the VAE

    again, vae2 = build(dataset_dir)
    assert vae2.calls == 0 and again.hits == 9


def test_editing_a_video_invalidates_exactly_its_entries(dataset_dir):
    build(dataset_dir)
    edited = dataset_dir / "videos" / "synthetic_0001.mp4"
    edited.write_bytes(encode_video(render_clip(99, 0, CLIP_FRAMES, H, W), 16))
    stats, vae = build(dataset_dir)
    assert vae.calls == 3
    assert stats.pruned == 1  # the edited video's old latents are gone
    assert len(list((dataset_dir / "cache" / "latents").iterdir())) == 3


class OtherPyAV(PyAVDecoder):
    identity = "pyav another-version"


def test_another_encoder_or_decoder_misses_the_cache_and_leaves_the_entries_alone(dataset_dir):
    build(dataset_dir)
    assert build(dataset_dir, vae=CountingVAE("stand-in-vae/v2"))[1].calls == 9
    assert build(dataset_dir, decoder=OtherPyAV())[1].calls == 9  # PyAV or DALI, and their version, are keyed
    assert build(dataset_dir)[1].calls == 0  # the first entries are still there


def test_unreadable_or_foreign_entries_are_recomputed_with_a_warning(dataset_dir, caplog):
    build(dataset_dir)
    files = sorted((dataset_dir / "cache" / "latents").rglob("*.safetensors"))
    truncated, garbage, foreign = files[0], files[1], files[2]
    truncated.write_bytes(truncated.read_bytes()[:-7])
    garbage.write_bytes(b"not a safetensors file")
    shutil.copyfile(files[3], foreign)  # a valid file, but written for another window
    with caplog.at_level(logging.WARNING):
        stats, vae = build(dataset_dir)
    assert vae.calls == 3 and stats.corrupt == 3
    for path, why in ((truncated, "unreadable"), (garbage, "unreadable"), (foreign, "written for another key")):
        assert f"{path} is {why}" in caplog.text
    assert build(dataset_dir)[1].calls == 0


def test_folder_and_non_finite_entries_are_recomputed_with_a_warning(dataset_dir, caplog):
    build(dataset_dir)
    files = sorted((dataset_dir / "cache").rglob("*.safetensors"))
    nan_latent, inf_latent, folder = files[0], files[-1], files[1]
    for path, bad in ((nan_latent, float("nan")), (inf_latent, float("inf"))):
        tensors = load_file(str(path))
        tensors["tensor"].view(-1)[:3] = bad
        with safe_open(str(path), framework="pt") as f:
            save_file(tensors, str(path), metadata=f.metadata())
    folder.unlink()
    (folder / "inside").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        stats, vae = build(dataset_dir)
    assert (vae.calls, stats.corrupt) == (3, 3)
    assert f"{nan_latent} is poisoned: 3 of its" in caplog.text and f"{inf_latent} is poisoned: 3 of its" in caplog.text
    assert f"{folder} is a folder, not a file" in caplog.text
    assert folder.is_file() and build(dataset_dir)[0].hits == 9


def test_reading_a_non_finite_entry_names_it(dataset_dir):
    key = LatentKey("0" * 64, 0, N, H, W, "stand-in-vae/v1", PyAVDecoder.identity)
    cache = LatentCache(dataset_dir)
    cache.store(key, torch.zeros(3, 3, 4, 6))
    save_file({"tensor": torch.full((3, 3, 4, 6), float("nan"))}, str(cache.path(key)), metadata=key.metadata())
    with pytest.raises(DatasetError, match=f"{key.relpath()}: cache entry poisoned: 216 of its 216 values are NaN"):
        cache.load(key)


def test_reading_a_missing_entry_names_it(dataset_dir):
    key = LatentKey("0" * 64, 0, N, H, W, "stand-in-vae/v1", PyAVDecoder.identity)
    with pytest.raises(DatasetError, match=f"{key.relpath()}: cache entry missing"):
        LatentCache(dataset_dir).load(key)


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
