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
* A missing entry is computed. An unusable one (truncated, garbage, a folder, another key, a NaN or Inf
  value) is recomputed with a warning naming the file. safetensors checks that the header covers the file
  exactly, so truncation is caught; a flipped bit inside the tensor data is not (there is no checksum)
  unless it makes a value non-finite. Every read checks the values, the build's included: it reads each
  entry once per run, the price of never training on (or keeping) a poisoned latent.
* Files are written atomically (temporary name in the same folder, then rename), so a crash mid-build
  leaves either the old entry or the new one. Directories of videos no longer in the dataset are pruned.
* `cache = "windows"` encodes a fixed set of windows per video (`window_starts`): the fewest windows that
  cover every frame, evenly spaced from the first frame to the last (a video of exactly `num_frames`
  frames has one). Training then samples among these windows instead of any start: less start jitter, in
  exchange for no VAE at all in the training step.

The encoder is anything with an `identity: str` and an `encode(...)` method (`VideoEncoder` below), so this
module does not depend on the model code.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cosmos_engine.data.dataset import VideoRecord, VideoWindowDataset
from cosmos_engine.atomic import atomic_path, remove_stale_temporaries
from cosmos_engine.data.video_io import to_unit_range
from cosmos_engine.errors import DatasetError

log = logging.getLogger(__name__)

CACHE_FORMAT = "1"  # bump when the stored layout or the pixel pipeline changes: old entries stop matching


class VideoEncoder(Protocol):
    """The VAE as the cache needs it."""

    identity: str  # names architecture, weights (e.g. a hash of the file) and dtype

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] float in [-1, 1] -> latents [B, C, T', H', W']."""


def window_starts(frames: int, num_frames: int) -> list[int]:
    """The cached windows of a video: ceil(frames / num_frames) starts, evenly spaced from 0 to the last
    possible start, so together they cover every frame."""
    if frames < num_frames:
        raise ValueError(f"a video of {frames} frames has no window of {num_frames}")
    count = -(-frames // num_frames)
    if count == 1:
        return [0]
    last = frames - num_frames
    return [i * last // (count - 1) for i in range(count)]


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
    corrupt: int = 0  # entries found unusable (unreadable, another key, non-finite values), recomputed
    pruned: int = 0  # directories of videos no longer in the dataset


class LatentCache:
    """The cache folder of one dataset (DATASET/cache)."""

    def __init__(self, dataset_dir: Path) -> None:
        self.root = Path(dataset_dir) / "cache"

    def path(self, key: LatentKey) -> Path:
        return self.root / key.relpath()

    def _read(self, key: LatentKey) -> tuple[torch.Tensor | None, str | None]:
        """(the tensor, None) when the entry for `key` is a file written for exactly this key with finite
        values, else (None, why not): "missing", or a reason to warn about."""
        path = self.path(key)
        if not path.exists():
            return None, "missing"
        if not path.is_file():
            return None, "a folder, not a file"
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata, names = f.metadata(), list(f.keys())
                if metadata != key.metadata():
                    return None, f"written for another key ({metadata})"
                if names != ["tensor"]:
                    return None, f"holds tensors {names}, expected one named 'tensor'"
                tensor = f.get_tensor("tensor")
        except (SafetensorError, OSError) as exc:
            return None, f"unreadable ({exc})"
        bad = tensor.numel() - int(torch.isfinite(tensor).sum())
        if bad:
            return None, f"poisoned: {bad} of its {tensor.numel()} values are NaN or Inf"
        return tensor, None

    def load(self, key: LatentKey) -> torch.Tensor:
        """The cached tensor; DatasetError when the entry is missing or unusable."""
        tensor, problem = self._read(key)
        if problem is not None:
            raise DatasetError(f"{self.path(key)}: cache entry {problem}; build the cache again (it is built "
                               "before training starts)")
        return tensor

    def store(self, key: LatentKey, tensor: torch.Tensor) -> None:
        if self.path(key).is_dir():  # a folder in the entry's place would make the rename below fail
            shutil.rmtree(self.path(key))
        with atomic_path(self.path(key)) as tmp:
            save_file({"tensor": tensor.detach().contiguous().cpu()}, str(tmp), metadata=key.metadata())

    def latent_key(self, record: VideoRecord, start: int, dataset: VideoWindowDataset, vae_identity: str) -> LatentKey:
        return LatentKey(record.sha256, start, dataset.num_frames, dataset.height, dataset.width, vae_identity,
                         dataset.decoder.identity)

    def build(self, dataset: VideoWindowDataset, vae: VideoEncoder, *,
              device: torch.device | str = "cpu", num_workers: int = 0, rank: int = 0, world_size: int = 1,
              worker_init_fn: Callable[[int], None] | None = None) -> BuildStats:
        """Encode every missing or unreadable entry of `dataset`'s windows.

        With several ranks each checks and encodes every world_size-th entry; the caller must wait for all
        ranks (a barrier) before training reads the cache. A CPU decoder runs in `num_workers` DataLoader
        workers while the VAE encodes, under `torch.inference_mode`.
        """
        stats = BuildStats()
        windows = [(i, start) for i, record in enumerate(dataset.records)
                   for start in window_starts(record.frames, dataset.num_frames)]
        # Each rank takes every world_size-th window of the whole list, then encodes those it finds missing:
        # splitting the missing ones instead would race with the entries other ranks are writing meanwhile.
        todo = [(i, start) for i, start in windows[rank::world_size]
                if self._needed(self.latent_key(dataset.records[i], start, dataset, vae.identity), stats)]
        if rank == 0:
            stats.pruned = self._prune({record.sha256 for record in dataset.records})
            self._remove_leftovers()

        if todo:  # (a DataLoader starts its workers even for nothing)
            device = torch.device(device)
            on_cpu = dataset.decoder.device.type == "cpu"  # a GPU decoder cannot run in forked workers
            videos = DataLoader(_WindowVideos(dataset, todo), batch_size=1, num_workers=num_workers if on_cpu else 0,
                                pin_memory=device.type == "cuda" and on_cpu, worker_init_fn=worker_init_fn)
            with torch.inference_mode():
                for (i, start), video in tqdm(zip(todo, videos), total=len(todo), desc="caching latents",
                                              unit="window", disable=None):
                    latent = vae.encode(to_unit_range(video.to(device, non_blocking=True)))[0]
                    self.store(self.latent_key(dataset.records[i], start, dataset, vae.identity), latent)
                    stats.latents_encoded += 1
        self._log(stats)
        return stats

    def _remove_leftovers(self) -> None:
        """Temporary files of killed writers (a builder that is still alive keeps its own)."""
        for folder in [self.root, *(p for p in self.root.rglob("*") if p.is_dir())] if self.root.is_dir() else []:
            remove_stale_temporaries(folder)

    def _log(self, stats: BuildStats) -> None:
        log.info("latent cache %s: %d hits, %d latents encoded, %d recomputed as unusable, %d stale video folders "
                 "pruned", self.root, stats.hits, stats.latents_encoded, stats.corrupt, stats.pruned)

    def _needed(self, key: LatentKey, stats: BuildStats) -> bool:
        _, problem = self._read(key)
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

    def __init__(self, cache: LatentCache, dataset: VideoWindowDataset, vae_identity: str) -> None:
        self.cache, self.dataset, self.vae_identity = cache, dataset, vae_identity

    def __len__(self) -> int:
        return len(self.dataset)

    def all_starts(self) -> list[list[int]]:
        """The cached windows of every video: what the sampler may draw from."""
        return [window_starts(r.frames, self.dataset.num_frames) for r in self.dataset.records]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, start = key
        record = self.dataset.records[index]
        latent = self.cache.load(self.cache.latent_key(record, start, self.dataset, self.vae_identity))
        return {"latent": latent, "prompt": record.prompt, "fps": record.fps, "video_index": index, "start": start}
