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

from cosmos_engine.data import cache as cache_module
from cosmos_engine.data import entries as entries_module
from cosmos_engine.data.cache import CachedWindowDataset, LatentCache, LatentKey, window_starts
from cosmos_engine.data.dataset import VideoWindowDataset, WindowSampler, build_loader, load_records
from cosmos_engine.data.decode_pyav import PyAVDecoder
from cosmos_engine.data.prepare import prepare_synthetic
from cosmos_engine.data.synthetic import render_clip
from cosmos_engine.data.video_io import encode_video, to_unit_range
from cosmos_engine.errors import DatasetError

N, H, W = 9, 32, 48
CLIP_FRAMES = 25  # valid starts 0..16
WINDOWS = {"window_stride": 8, "max_cached_windows": 100}  # -> windows at 0, 8, 16


class CountingVAE:
    """[B, 3, T, H, W] -> [B, 3, 1 + (T - 1) // 4, H / 8, W / 8]: every 4th frame, 8x8 average pooled."""

    dtype = torch.float32

    def __init__(self, identity: str = "stand-in-vae/v1") -> None:
        self.identity, self.calls = identity, 0

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.avg_pool3d(video[:, :, ::4], (1, 8, 8))

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        return 3, 1 + (num_frames - 1) // 4, height // 8, width // 8


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    out = tmp_path / "dataset"
    prepare_synthetic(out, count=3, seed=1, frames=CLIP_FRAMES, height=H, width=W)
    (out / "metas" / "synthetic_0002.txt").write_text("A video of sks teal robot, waving.")
    return out


def windows_of(dataset_dir: Path, decoder=None) -> VideoWindowDataset:
    return VideoWindowDataset(load_records(dataset_dir), N, H, W, decoder or PyAVDecoder())


def build(dataset_dir: Path, vae=None, decoder=None, **windows):
    vae = vae or CountingVAE()
    stats = LatentCache(dataset_dir).build(windows_of(dataset_dir, decoder), vae, **(windows or WINDOWS))
    return stats, vae


def test_window_starts_span_the_valid_range_at_most_stride_apart_within_the_budget():
    assert window_starts(93, 93, 8, 256) == [0]
    assert window_starts(94, 93, 8, 256) == [0, 1]
    assert window_starts(25, 9, 8, 100) == [0, 8, 16]
    assert window_starts(26, 9, 8, 100) == [0, 5, 11, 17]  # 17 is not a multiple of 8: evenly spread
    assert window_starts(25, 9, 1, 100) == list(range(17))
    assert window_starts(109, 9, 1, 5) == [0, 25, 50, 75, 100]  # the budget: spread evenly, further apart
    for frames in range(9, 80):
        last = frames - 9
        for stride in (1, 3, 8, 9, 40):
            for budget in (1, 2, 4, 1000):
                starts = window_starts(frames, 9, stride, budget)
                assert starts[0] == 0 and starts == sorted(set(starts)) and len(starts) <= budget
                if len(starts) > 1:
                    assert starts[-1] == last
                gaps = [b - a for a, b in zip(starts, starts[1:])]
                if budget == 1000:  # no budget: as few windows as keep the gaps within the stride
                    assert len(starts) == -(-last // stride) + 1 and all(g <= stride for g in gaps)
                assert not gaps or max(gaps) - min(gaps) <= 1  # evenly spread
        # stride = num_frames: the fewest windows that cover every frame
        starts = window_starts(frames, 9, 9, 1000)
        assert {f for s in starts for f in range(s, s + 9)} == set(range(frames)) and len(starts) == -(-frames // 9)


def test_second_epoch_and_second_build_call_no_encoder(dataset_dir):
    stats, vae = build(dataset_dir)
    assert vae.calls == 9 and stats.latents_encoded == 9

    windows = windows_of(dataset_dir)
    cached = CachedWindowDataset(LatentCache(dataset_dir), windows, vae.identity, **WINDOWS)
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


class Killed(BaseException):
    """What a kill does to the build: it stops inside an encode, with no clean-up of the build's own."""


class VAEKilledAtCall(CountingVAE):
    def __init__(self, call: int) -> None:
        super().__init__()
        self.kill_at = call

    def encode(self, video):
        if self.calls + 1 == self.kill_at:
            raise Killed
        return super().encode(video)


def test_a_build_killed_half_way_resumes_without_encoding_finished_windows_again(dataset_dir, caplog):
    with pytest.raises(Killed):
        build(dataset_dir, vae=VAEKilledAtCall(5))  # 4 of the 9 windows were written
    written = sorted((dataset_dir / "cache" / "latents").rglob("*.safetensors"))
    assert len(written) == 4
    stamps = {p: p.stat().st_mtime_ns for p in written}
    with caplog.at_level(logging.INFO):
        stats, vae = build(dataset_dir)
    assert (vae.calls, stats.latents_encoded, stats.hits) == (5, 5, 4)
    assert "9 windows (window_stride 8, at most 100 per video)" in caplog.text
    assert "5 to encode" in caplog.text and "4 already cached" in caplog.text
    assert "the first window took" in caplog.text and "the other 4 windows" in caplog.text
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # finished entries untouched
    assert build(dataset_dir)[1].calls == 0


def test_the_planned_and_reported_window_count_and_disk_size_are_what_is_written(tmp_path):
    # 2 videos of 29 frames: 21 valid starts each; stride 3 caches 8 starts from 0 to 20, which a budget of
    # 10 per video allows.
    long = tmp_path / "long"
    prepare_synthetic(long, count=2, seed=2, frames=29, height=H, width=W)
    windows, cache, vae = windows_of(long), LatentCache(long), CountingVAE()
    plan, todo, _ = cache.plan(windows, vae, window_stride=3, max_cached_windows=10)
    stats = cache.build(windows, vae, window_stride=3, max_cached_windows=10)
    files = sorted((long / "cache" / "latents").rglob("*.safetensors"))
    assert plan.videos == 2 and plan.windows == plan.to_encode == len(todo) == stats.windows == len(files) == 2 * 8
    assert plan.bytes == plan.bytes_to_write == stats.window_bytes == sum(f.stat().st_size for f in files)
    again, _, _ = cache.plan(windows, vae, window_stride=3, max_cached_windows=10)
    assert (again.windows, again.to_encode, again.bytes_to_write, again.bytes) == (16, 0, 0, plan.bytes)
    # A budget of 4 per video: other starts, of which those shared with stride 3 are cached already.
    fewer, _, _ = cache.plan(windows, vae, window_stride=3, max_cached_windows=4)
    shared = set(window_starts(29, N, 3, 4)) & set(window_starts(29, N, 3, 10))
    assert 0 < len(shared) < 4 and (fewer.windows, fewer.to_encode) == (8, 2 * (4 - len(shared)))


def test_the_planned_entry_size_is_the_written_file_size_whatever_the_header_padding(dataset_dir):
    # The header is padded to 8 bytes: identities of 8 consecutive lengths put a one-digit-longer start on
    # both sides of a padding boundary.
    cache, sizes = LatentCache(dataset_dir), {}
    for extra in range(8):
        size = cache_module._EntrySize((3, 3, 4, 6), torch.float32)
        for start in (9, 10, 99, 100, 123456):
            key = LatentKey("0" * 64, start, N, H, W, "stand-in-vae/v1" + "x" * extra, PyAVDecoder.identity)
            cache.store(key, torch.ones(3, 3, 4, 6))
            sizes[extra, start] = cache.path(key).stat().st_size
            assert size(key) == sizes[extra, start], (extra, start)
    assert any(sizes[extra, 9] != sizes[extra, 10] for extra in range(8))  # a boundary between 9 and 10


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


def test_folder_entries_are_recomputed_with_a_warning(dataset_dir, caplog):
    build(dataset_dir)
    folder = sorted((dataset_dir / "cache" / "latents").rglob("*.safetensors"))[1]
    folder.unlink()
    (folder / "inside").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        stats, vae = build(dataset_dir)
    assert (vae.calls, stats.corrupt, stats.hits) == (1, 1, 8)
    assert f"{folder} is a folder, not a file" in caplog.text
    assert folder.is_file() and build(dataset_dir)[0].hits == 9


def poison(path: Path, value: float) -> None:
    """Overwrite the first 3 values of an entry, keeping its key: what bit rot after the write looks like."""
    tensors = load_file(str(path))
    tensors["tensor"].view(-1)[:3] = value
    with safe_open(str(path), framework="pt") as f:
        save_file(tensors, str(path), metadata=f.metadata())


def test_a_build_reads_headers_only_and_a_poisoned_entry_is_refused_on_read_deleted_and_rebuilt(dataset_dir,
                                                                                                  monkeypatch):
    build(dataset_dir)
    files = sorted((dataset_dir / "cache" / "latents").rglob("*.safetensors"))
    nan_latent, inf_latent = files[0], files[-1]  # of different videos
    poison(nan_latent, float("nan"))
    poison(inf_latent, float("inf"))
    checked = []
    monkeypatch.setattr(entries_module, "non_finite", lambda t: checked.append(t.numel()) or 0)
    stats, vae = build(dataset_dir)  # the cached build: no entry's values are read
    assert (vae.calls, stats.hits, stats.corrupt, checked) == (0, 9, 0, [])
    monkeypatch.undo()

    windows, cache = windows_of(dataset_dir), LatentCache(dataset_dir)
    cached = CachedWindowDataset(cache, windows, vae.identity, **WINDOWS)

    def window_of(entry: Path) -> tuple[int, int]:
        return next(i for i, r in enumerate(windows.records) if r.sha256 == entry.parent.name), int(entry.name[5:11])

    for entry in (nan_latent, inf_latent):
        with pytest.raises(DatasetError, match=f"{entry}: cache entry poisoned: 3 of its 216 values are NaN or Inf "
                                               r"\(deleted\); build the cache again"):
            cached[window_of(entry)]
        assert not entry.exists()
    stats, vae = build(dataset_dir)
    assert (vae.calls, stats.latents_encoded, stats.hits, stats.corrupt) == (2, 2, 7, 0)
    for entry in (nan_latent, inf_latent):
        assert torch.isfinite(cached[window_of(entry)]["latent"]).all()


def test_an_encoder_producing_nan_is_named_and_nothing_is_cached(dataset_dir):
    class NaNVAE(CountingVAE):
        def encode(self, video):
            return super().encode(video) * float("nan")

    with pytest.raises(DatasetError, match="the encoder produced 216 NaN or Inf values of 216 for .*'start': '0'"):
        build(dataset_dir, vae=NaNVAE())
    assert not list((dataset_dir / "cache" / "latents").rglob("*.safetensors"))


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


def test_the_encode_time_is_stated_before_the_first_window_and_only_when_windows_are_missing(dataset_dir, caplog):
    vae, asked = CountingVAE(), []

    def estimate():
        asked.append(vae.calls)  # how many windows were encoded when the estimate was made
        return 40.0, "by the test"

    cache, windows = LatentCache(dataset_dir), windows_of(dataset_dir)
    with caplog.at_level(logging.INFO):
        cache.build(windows, vae, estimate=estimate, **WINDOWS)
    assert asked == [0] and vae.calls == 9
    assert "about 6 minutes to encode the 9 windows of this rank (by the test)" in caplog.text
    cache.build(windows, vae, estimate=estimate, **WINDOWS)  # all cached: nothing to estimate
    assert asked == [0]
