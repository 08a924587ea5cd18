"""Which window starts training draws with the cache on: uniform over the cached starts, over the whole valid
range, the online rule at window_stride = 1, and the same starts for the same (step, sample) whatever the
rank count or a resume. Sampler-level (no video is decoded): the draws are what is under test."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from cosmos_engine.data.cache import CachedWindowDataset, window_starts
from cosmos_engine.data.dataset import VideoRecord, VideoWindowDataset, WindowSampler

NUM_FRAMES = 17
FRAMES = [NUM_FRAMES + 100, NUM_FRAMES + 37, NUM_FRAMES + 16, NUM_FRAMES]  # valid starts 0..100, 0..37, 0..16, 0
SIGNIFICANCE = 0.001  # a uniform sampler fails one video's test with this probability (the seed is fixed)
DRAWS = 1500  # per video


def videos(frames: list[int] = FRAMES) -> VideoWindowDataset:
    records = [VideoRecord(Path(f"v{i}.mp4"), "p", n, 16.0, f"{i:064d}") for i, n in enumerate(frames)]
    return VideoWindowDataset(records, NUM_FRAMES, 32, 48, decoder=None)


def cached_starts(stride: int, budget: int = 10_000) -> list[list[int]]:
    """What training draws from with cache = "windows" (CachedWindowDataset reads no file for this)."""
    return CachedWindowDataset(None, videos(), "vae", window_stride=stride, max_cached_windows=budget).all_starts()


def drawn(starts: list[list[int]], count: int, seed: int = 0) -> dict[int, Counter]:
    sampler = WindowSampler(starts, seed=seed)
    per_video: dict[int, Counter] = {i: Counter() for i in range(len(starts))}
    for position in range(count):
        video, start = sampler.draw(position)
        per_video[video][start] += 1
    return per_video


def chi_square_p_value(counts: Counter, support: list[int]) -> float:
    """P(X >= observed) for X chi-square with len(support) - 1 degrees of freedom, under uniform draws."""
    total = sum(counts.values())
    expected = total / len(support)
    statistic = sum((counts[s] - expected) ** 2 / expected for s in support)
    dof = len(support) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


def test_drawn_starts_are_uniform_over_the_cached_starts_and_cover_the_valid_range():
    starts = cached_starts(stride=8)
    assert starts == [window_starts(n, NUM_FRAMES, 8, 10_000) for n in FRAMES]
    assert [len(s) for s in starts] == [14, 6, 3, 1]
    per_video = drawn(starts, count=4 * DRAWS)  # >= 100 draws per cached start
    for video, (support, counts) in enumerate(zip(starts, per_video.values())):
        assert sum(counts.values()) == DRAWS
        assert set(counts) == set(support)  # every cached start drawn, nothing else
        assert min(counts) == 0 and max(counts) == FRAMES[video] - NUM_FRAMES  # the whole valid range
        if len(support) > 1:
            assert chi_square_p_value(counts, support) > SIGNIFICANCE, (video, counts)


def test_the_chi_square_check_can_fail():
    # At the same significance and sample size it catches a sampler that never draws the last start (the
    # official randint's quirk) and one that draws the first start twice as often as the others.
    support = window_starts(FRAMES[0], NUM_FRAMES, 8, 10_000)
    never_last = Counter({s: DRAWS // (len(support) - 1) for s in support[:-1]})
    first_twice = Counter({s: DRAWS // (len(support) + 1) * (2 if s == 0 else 1) for s in support})
    assert chi_square_p_value(never_last, support) < SIGNIFICANCE
    assert chi_square_p_value(first_twice, support) < SIGNIFICANCE


def test_window_stride_1_is_the_online_rule_start_uniform_over_0_to_frames_minus_num_frames():
    cached, online = cached_starts(stride=1), videos().all_starts()
    assert [list(s) for s in online] == [list(range(n - NUM_FRAMES + 1)) for n in FRAMES] == cached
    # The same (seed, epoch, slot) stream: draw for draw the starts cache = "off" would decode.
    assert [WindowSampler(cached, seed=4).draw(p) for p in range(400)] == \
           [WindowSampler(online, seed=4).draw(p) for p in range(400)]
    counts = drawn(cached[:1], count=101 * 10)[0]  # the longest video alone: 10 draws per start
    assert chi_square_p_value(counts, cached[0]) > SIGNIFICANCE and set(counts) == set(range(101))
    # The budget: 101 valid starts, 11 windows, evenly spread, still from the first start to the last.
    assert cached_starts(stride=1, budget=11)[0] == list(range(0, 101, 10))


def test_one_rank_and_two_ranks_and_a_resume_draw_the_same_starts_for_the_same_step_and_sample():
    starts = cached_starts(stride=8)  # 4 videos: a multiple of both rank counts, as DistributedSampler needs
    steps, global_batch = 30, 2

    def per_sample(world_size: int, resume_at: int | None = None) -> dict[tuple[int, int], tuple[int, int]]:
        """(step, sample index) -> (video, start), sample = step * global_batch + rank * batch + i."""
        batch = global_batch // world_size
        out = {}
        for rank in range(world_size):
            sampler = WindowSampler(starts, seed=7, rank=rank, world_size=world_size)
            stream = iter(sampler)
            for step in range(steps):
                if step == resume_at:  # a new process, from the saved state
                    state = sampler.state_dict()
                    sampler = WindowSampler(starts, seed=7, rank=rank, world_size=world_size)
                    sampler.load_state_dict(state)
                    stream = iter(sampler)
                for i in range(batch):
                    out[(step, step * global_batch + rank * batch + i)] = next(stream)
        return out

    one_rank = per_sample(1)
    assert per_sample(2) == one_rank
    assert per_sample(1, resume_at=13) == one_rank and per_sample(2, resume_at=7) == one_rank
    assert len({start for _, start in one_rank.values()}) > 10  # many starts drawn, not a fixed few
