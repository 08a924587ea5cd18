"""Training windows and the sampler: content, size, range, the exact-length video, determinism, resume."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_engine.data.dataset import VideoWindowDataset, WindowSampler, build_loader, load_records
from cosmos_engine.data.decode_pyav import PyAVDecoder
from cosmos_engine.data.prepare import prepare_videos
from cosmos_engine.data.video_io import write_video
from cosmos_engine.errors import DatasetError

N = 17  # frames per window in these tests (1 + 4k, like the real 93)
FRAMES = {"a_exact.mp4": N, "b.mp4": 20, "c.mp4": 25}


def grey_clip(count: int, offset: int) -> np.ndarray:
    """Frame t is flat grey 2 * (offset + t): lossless coding keeps it, so a window names its frames."""
    return np.stack([np.full((48, 64, 3), 2 * (offset + t), dtype=np.uint8) for t in range(count)])


def frame_ids(video: torch.Tensor, offset: int) -> list[int]:
    """Inverse of grey_clip for a uint8 [3, T, H, W] window. A resize may truncate 2k to 2k - 1."""
    return [round((float(v.float().mean()) + 0.5) / 2) - offset for v in video.unbind(1)]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for i, (name, count) in enumerate(FRAMES.items()):
        write_video(src / name, grey_clip(count, 30 * i), fps=16, lossless=True)
    out = tmp_path_factory.mktemp("dataset")
    prepare_videos(src, out, prompt="A video of sks teal robot.", num_frames=N)
    return out


@pytest.fixture(scope="module")
def windows(dataset_dir) -> VideoWindowDataset:
    return VideoWindowDataset(load_records(dataset_dir), N, 48, 64, PyAVDecoder())


def test_window_has_the_right_frames_length_size_and_range(windows):
    item = windows[(2, 5)]
    assert item["video"].shape == (3, N, 48, 64) and item["video"].dtype == torch.uint8
    assert frame_ids(item["video"], 60) == list(range(5, 5 + N))
    assert item["prompt"] == "A video of sks teal robot." and item["fps"] == 16.0 and item["start"] == 5


def test_windows_are_resized_to_the_recipe_size(dataset_dir):
    video = VideoWindowDataset(load_records(dataset_dir), N, 32, 48, PyAVDecoder())[(1, 3)]["video"]
    assert video.shape == (3, N, 32, 48)
    assert frame_ids(video, 30) == list(range(3, 3 + N))  # flat frames stay flat through the resize


def test_a_video_of_exactly_num_frames_is_valid_and_every_last_window_is_drawn(windows):
    assert [len(s) for s in windows.all_starts()] == [1, 4, 9]
    sampler = WindowSampler(windows.all_starts(), seed=0)
    draws = [sampler.draw(p) for p in range(300)]
    assert {start for video, start in draws if video == 0} == {0}
    assert {start for video, start in draws if video == 1} == {0, 1, 2, 3}  # 3 = the last window
    assert frame_ids(windows[(0, 0)]["video"], 0) == list(range(N))


def test_shorter_videos_than_num_frames_are_named(dataset_dir):
    with pytest.raises(DatasetError, match=r"num_frames = 21: a_exact.mp4 \(17 frames\), b.mp4 \(20 frames\)"):
        VideoWindowDataset(load_records(dataset_dir), 21, 48, 64, PyAVDecoder())


def test_sampler_is_deterministic_per_seed_and_advances_epochs():
    starts = [range(10)] * 8
    first = [WindowSampler(starts, seed=5).draw(p) for p in range(40)]
    assert first == [WindowSampler(starts, seed=5).draw(p) for p in range(40)]
    assert first != [WindowSampler(starts, seed=6).draw(p) for p in range(40)]
    epochs = [tuple(v for v, _ in first[e * 8:(e + 1) * 8]) for e in range(5)]
    assert all(sorted(e) == list(range(8)) for e in epochs)  # each epoch visits every video once
    assert len(set(epochs)) > 1  # and the order changes between epochs


def test_ranks_split_each_epoch():
    starts = [range(10)] * 5
    per_rank = [[WindowSampler(starts, seed=1, rank=r, world_size=2).draw(p) for p in range(3)] for r in range(2)]
    videos = [v for rank in per_rank for v, _ in rank]
    assert len(videos) == 6 and set(videos) == set(range(5))  # 5 videos padded to 6 slots, like DistributedSampler


def test_sampler_state_round_trip_mid_epoch_gives_the_same_remaining_sequence():
    starts = [range(7), range(3), range(12)]
    sampler = WindowSampler(starts, seed=11)
    stream = iter(sampler)
    [next(stream) for _ in range(4)]  # mid-epoch 2
    state = sampler.state_dict()
    expected = [next(stream) for _ in range(10)]
    resumed = WindowSampler(starts, seed=11)
    resumed.load_state_dict(state)
    assert list(zip(range(10), iter(resumed))) == list(enumerate(expected))


def test_loader_resumes_after_the_batches_it_handed_out_not_the_prefetched_ones(windows):
    loader = build_loader(windows, WindowSampler(windows.all_starts(), seed=3), batch_size=2, num_workers=2)
    keys = lambda batch: list(zip(batch["video_index"].tolist(), batch["start"].tolist()))  # noqa: E731
    seen = [keys(next(loader)) for _ in range(3)]
    state = loader.state_dict()
    assert state["position"] == 6 and loader.sampler.position > 6  # workers ran ahead
    assert loader.last_wait_s > 0 and loader.total_wait_s >= loader.last_wait_s
    expected = [keys(next(loader)) for _ in range(2)]

    resumed = build_loader(windows, WindowSampler(windows.all_starts(), seed=3), batch_size=2, num_workers=0)
    resumed.load_state_dict(state)
    assert [keys(next(resumed)) for _ in range(2)] == expected
    first = WindowSampler(windows.all_starts(), seed=3)
    assert seen == [[first.draw(2 * b), first.draw(2 * b + 1)] for b in range(3)]


def test_records_follow_edits_and_report_problems(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "v.mp4", grey_clip(N, 0), fps=16)
    out = tmp_path / "d"
    prepare_videos(src, out, prompt="p", num_frames=N)
    before = load_records(out)[0]
    write_video(tmp_path / "new.mp4", grey_clip(N + 4, 3), fps=16)
    (out / "videos" / "v.mp4").write_bytes((tmp_path / "new.mp4").read_bytes())  # edited in place
    with caplog.at_level(logging.WARNING):
        after = load_records(out)[0]
    assert "changed since `prepare`" in caplog.text
    assert after.frames == N + 4 and after.sha256 != before.sha256
    (out / "metas" / "v.txt").unlink()
    with pytest.raises(DatasetError, match="v.txt: cannot read the caption"):
        load_records(out)
    (out / "manifest.json").unlink()
    with pytest.raises(DatasetError, match="manifest.json: not found.*cosmos-engine prepare"):
        load_records(out)


def test_loader_delivers_float_windows_in_unit_range_on_the_device(windows):
    loader = build_loader(windows, WindowSampler(windows.all_starts(), seed=0), batch_size=2, num_workers=0,
                          device=torch.device("cpu"))
    batch = next(loader)
    assert batch["video"].shape == (2, 3, N, 48, 64) and batch["video"].dtype == torch.float32
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1 and len(batch["prompt"]) == 2
    index, start = int(batch["video_index"][0]), int(batch["start"][0])
    assert torch.equal(batch["video"][0], windows[(index, start)]["video"].float() / 127.5 - 1)
