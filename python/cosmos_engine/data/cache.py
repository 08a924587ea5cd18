"""The latent cache: encode each training window once, then train on files.

The frozen VAE gives the same output for the same input, so re-running it at every step (as the official
trainer does) is pure waste. Before training, `LatentCache.build` encodes what is missing and stores it as
safetensors under DATASET/cache/ (the captions' embeddings go beside it, cache/text, through
`data.text_embeddings`, which inference shares):

```
cache/latents/<video sha256>/start<start>_n<num_frames>_<height>x<width>_<hash of VAE + decoder identity>.safetensors
```

* Keys are content, not names: the video's sha256 (so editing a video invalidates exactly its entries),
  the window, the training size, the encoder's `identity` string (so another VAE, other weights or another
  dtype, never reads stale latents) and the video decoder with its version (PyAV and DALI need not give
  the same pixels). Each file also stores its full key as safetensors
  metadata, checked on every read: an entry is used only if it was written for exactly this key.
* A missing entry is computed. An unusable one (truncated, garbage, a folder, another key) is recomputed
  with a warning naming the file. safetensors checks that the header covers the file exactly, so
  truncation is caught by opening the file, which reads only its header: a build with everything cached
  reads a few KB per entry, not the entries (8.8 GB for the NeMo set). Values are checked where they pass
  through memory anyway: `store` refuses a NaN or Inf (the encoder's fault, named with the window), and
  every `load` checks them; an entry found poisoned there (a flipped bit that made a value non-finite;
  there is no checksum, so other flips go unseen) is deleted, so the next build encodes it again.
* Files are written atomically (temporary name in the same folder, then rename), so a crash mid-build
  leaves either the old entry or the new one, and a killed build resumes where it stopped: finished
  entries are hits. Directories of videos no longer in the dataset are pruned.
* `cache = "windows"` encodes a fixed set of windows per video (`window_starts`): starts spread evenly
  from the first valid start to the last, at most `[data] window_stride` frames apart and at most
  `[data] max_cached_windows` of them. Training then draws a start uniformly among these (the sampler,
  dataset.py), with no VAE at all in the training step. `window_stride = 1` caches every valid start,
  which is exactly the online path's distribution (cache = "off"); `window_stride = num_frames` gives
  the fewest windows that cover every frame. `LatentCache.build` states the count, the disk size and
  (after the first window) the encode time before it does the work.

The encoder is anything with an `identity: str` and an `encode(...)` method (`VideoEncoder` below), so this
module does not depend on the model code.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cosmos_engine.data.dataset import VideoRecord, VideoWindowDataset
from cosmos_engine.data.entries import non_finite, read_entry, write_entry
from cosmos_engine.atomic import remove_stale_temporaries
from cosmos_engine.data.video_io import to_unit_range
from cosmos_engine.errors import DatasetError

log = logging.getLogger(__name__)

CACHE_FORMAT = "1"  # bump when the stored layout or the pixel pipeline changes: old entries stop matching


class VideoEncoder(Protocol):
    """The VAE as the cache needs it."""

    identity: str  # names architecture, weights (e.g. a hash of the file) and dtype
    dtype: torch.dtype  # what the cache stores latents in

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] float in [-1, 1] -> latents [B, C, T', H', W']."""

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """[C, T', H', W'] of one window's latent, known without encoding (for the build's disk size)."""


def window_starts(frames: int, num_frames: int, stride: int, max_windows: int) -> list[int]:
    """The cached window starts of a video: evenly spread from 0 to the last valid start `frames -
    num_frames`, at most `stride` frames apart (exactly `stride` when it divides that range) and at most
    `max_windows` of them (then as far apart as the range divided by `max_windows - 1`)."""
    if frames < num_frames:
        raise ValueError(f"a video of {frames} frames has no window of {num_frames}")
    if stride < 1 or max_windows < 1:
        raise ValueError(f"window stride and window budget must be at least 1, got {stride} and {max_windows}")
    last = frames - num_frames
    count = min(-(-last // stride) + 1, max_windows)
    if count == 1:
        return [0]
    return [i * last // (count - 1) for i in range(count)]


def cached_windows(dataset: VideoWindowDataset, stride: int, max_windows: int) -> list[tuple[int, int]]:
    """(video index, start) of every cached window of `dataset`, video by video."""
    return [(i, start) for i, record in enumerate(dataset.records)
            for start in window_starts(record.frames, dataset.num_frames, stride, max_windows)]


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LatentKey:
    video_sha256: str
    start: int
    num_frames: int
    height: int
    width: int
    encoder: str
    decoder: str  # the video decoder and its version (`identity` of decode_pyav / decode_dali)

    def relpath(self) -> Path:
        codecs = _short_hash(f"{self.encoder}\0{self.decoder}")
        return (Path("latents") / self.video_sha256 /
                f"start{self.start:06d}_n{self.num_frames}_{self.height}x{self.width}_{codecs}.safetensors")

    def metadata(self) -> dict[str, str]:
        return {"kind": "latent", "format": CACHE_FORMAT, "video_sha256": self.video_sha256, "start": str(self.start),
                "num_frames": str(self.num_frames), "height": str(self.height), "width": str(self.width),
                "encoder": self.encoder, "decoder": self.decoder}


@dataclass
class BuildStats:
    latents_encoded: int = 0
    hits: int = 0
    corrupt: int = 0  # entries found unusable (unreadable, another key), recomputed
    pruned: int = 0  # directories of videos no longer in the dataset
    windows: int = 0  # this rank's cached windows once the build is done (all of them with one rank)
    window_bytes: int = 0  # their size on disk, measured after the build


@dataclass(frozen=True)
class CachePlan:
    """What a build of the windows costs, stated before it encodes anything."""

    videos: int
    windows: int  # the dataset's cached windows, every rank's
    bytes: int  # their size on disk once all are cached
    to_encode: int  # this rank's windows not cached yet
    bytes_to_write: int
    stride: int
    max_windows: int

    def describe(self) -> str:
        return (f"{self.videos} videos, {self.windows} windows (window_stride {self.stride}, at most "
                f"{self.max_windows} per video), {human_bytes(self.bytes)}: {self.to_encode} to encode "
                f"({human_bytes(self.bytes_to_write)}), {self.windows - self.to_encode} already cached")


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def human_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


class LatentCache:
    """The cache folder of one dataset (DATASET/cache)."""

    def __init__(self, dataset_dir: Path) -> None:
        self.root = Path(dataset_dir) / "cache"

    def path(self, key: LatentKey) -> Path:
        return self.root / key.relpath()

    def _read(self, key: LatentKey, *, values: bool) -> tuple[torch.Tensor | None, str | None]:
        """`data.entries.read_entry` for `key`'s entry."""
        return read_entry(self.path(key), key.metadata(), values=values)

    def load(self, key: LatentKey) -> torch.Tensor:
        """The cached tensor; DatasetError when the entry is missing or unusable. An unusable entry is
        deleted (a build only reads headers, so it would not see poisoned values), so that the next build,
        before training starts, encodes it again."""
        tensor, problem = self._read(key, values=True)
        if problem is not None:
            removed = ""
            if problem != "missing" and self.path(key).is_file():
                self.path(key).unlink(missing_ok=True)
                removed = " (deleted)"
            raise DatasetError(f"{self.path(key)}: cache entry {problem}{removed}; build the cache again (it is "
                               "built before training starts, or by `cosmos-engine prepare --cache RECIPE`)")
        return tensor

    def store(self, key: LatentKey, tensor: torch.Tensor) -> None:
        """Write the entry atomically, after checking its values: the one time they are checked on the
        build's side."""
        bad = non_finite(tensor)
        if bad:
            raise DatasetError(f"{self.path(key)}: the encoder produced {bad} NaN or Inf values of "
                               f"{tensor.numel()} for {key.metadata()}; nothing was cached for it")
        write_entry(self.path(key), tensor, key.metadata())

    def latent_key(self, record: VideoRecord, start: int, dataset: VideoWindowDataset, vae_identity: str) -> LatentKey:
        return LatentKey(record.sha256, start, dataset.num_frames, dataset.height, dataset.width, vae_identity,
                         dataset.decoder.identity)

    def plan(self, dataset: VideoWindowDataset, vae: VideoEncoder, *, window_stride: int, max_cached_windows: int,
             rank: int = 0, world_size: int = 1) -> tuple[CachePlan, list[tuple[int, int]], BuildStats]:
        """The windows and their disk size, and which of this rank's are missing (from the entries' headers
        only). Returns the plan, this rank's windows to encode and the hit / unusable counts."""
        stats = BuildStats()
        windows = cached_windows(dataset, window_stride, max_cached_windows)
        keys = {w: self.latent_key(dataset.records[w[0]], w[1], dataset, vae.identity) for w in windows}
        # Each rank takes every world_size-th window of the whole list, then encodes those it finds missing:
        # splitting the missing ones instead would race with the entries other ranks are writing meanwhile.
        todo = [w for w in windows[rank::world_size] if self._needed(keys[w], stats)]
        shape = vae.latent_shape(dataset.num_frames, dataset.height, dataset.width)
        size = _EntrySize(shape, vae.dtype)
        plan = CachePlan(videos=len(dataset.records), windows=len(windows), bytes=sum(size(k) for k in keys.values()),
                         to_encode=len(todo), bytes_to_write=sum(size(keys[w]) for w in todo), stride=window_stride,
                         max_windows=max_cached_windows)
        return plan, todo, stats

    def build(self, dataset: VideoWindowDataset, vae: VideoEncoder, *, window_stride: int, max_cached_windows: int,
              device: torch.device | str = "cpu", num_workers: int = 0, rank: int = 0,
              world_size: int = 1, worker_init_fn: Callable[[int], None] | None = None,
              estimate: Callable[[], tuple[float, str]] | None = None) -> BuildStats:
        """Encode every missing or unreadable entry of `dataset`'s cached windows (`window_starts`).

        Logs the plan first (windows, disk size, how many to encode, and when there are some and `estimate`
        gives (seconds per window, how estimated), the time they will take) and, after the first window, the
        time the rest will take at that window's pace. With several ranks each checks and encodes every
        world_size-th window; the caller must wait for all ranks (a barrier) before training reads the
        cache. A CPU decoder runs in `num_workers` DataLoader workers while the VAE encodes, under
        `torch.inference_mode`. Latents are stored in the encoder's dtype.
        """
        plan, todo, stats = self.plan(dataset, vae, window_stride=window_stride, max_cached_windows=max_cached_windows,
                                      rank=rank, world_size=world_size)
        if rank == 0:
            share = f" (rank 0 of {world_size} encodes every {world_size}th window)" if world_size > 1 else ""
            log.info("latent cache %s: %s%s", self.root, plan.describe(), share)
            if plan.to_encode and estimate is not None:
                seconds, how = estimate()
                log.info("latent cache: about %s to encode the %d windows of this rank (%s)",
                         human_duration(seconds * plan.to_encode), plan.to_encode, how)
            stats.pruned = self._prune({record.sha256 for record in dataset.records})
            self._remove_leftovers()

        if todo:  # (a DataLoader starts its workers even for nothing)
            device = torch.device(device)
            on_cpu = dataset.decoder.device.type == "cpu"  # a GPU decoder cannot run in forked workers
            videos = DataLoader(_WindowVideos(dataset, todo), batch_size=1, num_workers=num_workers if on_cpu else 0,
                                pin_memory=device.type == "cuda" and on_cpu, worker_init_fn=worker_init_fn)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for (i, start), video in tqdm(zip(todo, videos), total=len(todo), desc="caching latents",
                                              unit="window", disable=None):
                    latent = vae.encode(to_unit_range(video.to(device, non_blocking=True)))[0].to(vae.dtype)
                    self.store(self.latent_key(dataset.records[i], start, dataset, vae.identity), latent)
                    stats.latents_encoded += 1
                    if stats.latents_encoded == 1 and rank == 0 and len(todo) > 1:
                        first = time.perf_counter() - t0
                        log.info("latent cache: the first window took %.1f s (decode, encode and write, warm-up "
                                 "included): about %s more for the other %d windows of this rank, estimated "
                                 "from that one window", first, human_duration(first * (len(todo) - 1)),
                                 len(todo) - 1)
        mine = cached_windows(dataset, window_stride, max_cached_windows)[rank::world_size]
        stats.windows = len(mine)
        stats.window_bytes = sum(self.path(self.latent_key(dataset.records[i], start, dataset, vae.identity)).stat().st_size
                                 for i, start in mine)
        self._log(stats)
        return stats

    def _remove_leftovers(self) -> None:
        """Temporary files of killed writers (a builder that is still alive keeps its own)."""
        for folder in [self.root, *(p for p in self.root.rglob("*") if p.is_dir())] if self.root.is_dir() else []:
            remove_stale_temporaries(folder)

    def _log(self, stats: BuildStats) -> None:
        log.info("latent cache %s: %d hits, %d latents encoded, %d recomputed as unusable, "
                 "%d stale video folders pruned; %d windows cached (%s)", self.root, stats.hits,
                 stats.latents_encoded, stats.corrupt, stats.pruned, stats.windows,
                 human_bytes(stats.window_bytes))

    def _needed(self, key: LatentKey, stats: BuildStats) -> bool:
        _, problem = self._read(key, values=False)
        if problem is None:
            stats.hits += 1
            return False
        if problem != "missing":
            log.warning("cache entry %s is %s; recomputing it", self.path(key), problem)
            stats.corrupt += 1
        return True

    def _prune(self, live_shas: set[str]) -> int:
        latents = self.root / "latents"
        stale = [d for d in latents.iterdir() if d.is_dir() and d.name not in live_shas] if latents.is_dir() else []
        for directory in stale:
            shutil.rmtree(directory)
        return len(stale)


class _EntrySize:
    """The file size of a latent entry of a given shape and dtype, per key: the data plus a JSON header whose
    length follows from the lengths of the metadata's values (exact while none needs escaping), so one
    serialization per distinct set of lengths (the start's digit count is what varies)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.shape, self.dtype = shape, dtype
        self._by_lengths: dict[tuple, int] = {}

    def __call__(self, key: LatentKey) -> int:
        metadata = key.metadata()
        lengths = tuple(sorted((name, len(value.encode())) for name, value in metadata.items()))
        if lengths not in self._by_lengths:
            zeros = torch.zeros(self.shape, dtype=self.dtype)
            self._by_lengths[lengths] = len(save({"tensor": zeros}, metadata=metadata))
        return self._by_lengths[lengths]


class _WindowVideos(Dataset):
    """The decoded windows the cache still needs, as a map-style dataset for a DataLoader."""

    def __init__(self, dataset: VideoWindowDataset, windows: list[tuple[int, int]]) -> None:
        self.dataset, self.windows = dataset, windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.dataset[self.windows[i]]["video"]


class CachedWindowDataset(Dataset):
    """(video index, start) -> the cached latent of that window and its caption; no decoding, no VAE.

    Item: `latent` [C, T', H', W'] (the VAE's dtype), `prompt` str, `fps` float, `video_index` int,
    `start` int. Text embeddings come from `data.text_embeddings`.
    """

    def __init__(self, cache: LatentCache, dataset: VideoWindowDataset, vae_identity: str, *, window_stride: int,
                 max_cached_windows: int) -> None:
        self.cache, self.dataset, self.vae_identity = cache, dataset, vae_identity
        self.window_stride, self.max_cached_windows = window_stride, max_cached_windows

    def __len__(self) -> int:
        return len(self.dataset)

    def all_starts(self) -> list[list[int]]:
        """The cached windows of every video (the build's `window_starts`): what the sampler draws from."""
        return [window_starts(r.frames, self.dataset.num_frames, self.window_stride, self.max_cached_windows)
                for r in self.dataset.records]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, start = key
        record = self.dataset.records[index]
        latent = self.cache.load(self.cache.latent_key(record, start, self.dataset, self.vae_identity))
        return {"latent": latent, "prompt": record.prompt, "fps": record.fps, "video_index": index, "start": start}
