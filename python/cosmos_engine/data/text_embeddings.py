"""The text-embedding cache of training and inference: each (prompt, text encoder) is encoded once, stored,
and read back lazily, so a start with every prompt cached never loads the text encoder.

Training keeps its captions' embeddings under DATASET/cache/text, inference its prompts and negative
prompts under OUTPUT/.cache/text; both call `cached_embeddings`:

1. The encoder's identity (`models.text_encoder.encoder_identity`, from its files, dtype and recipe). The
   file digests are remembered in `<folder>/encoder_files.json` while each file's size and mtime are
   unchanged, so the 16 GB of Reason1 are hashed once, not at every start.
2. Every distinct prompt's entry is looked up (its header only). The text encoder is loaded only when one
   is missing or unusable, and encodes just those, a few at a time. Under torchrun rank 0 does this while
   the other ranks wait at a barrier, then they look the entries up themselves; a rank that still misses
   some (a cache folder that is not shared with rank 0, e.g. on another node) encodes them itself, with a
   warning.
3. The result, `TextEmbeddings`, maps prompt -> [512, D] and reads the entry's file at every access
   (safetensors, memory-mapped), so host memory does not grow with the number of prompts: 400 captions of
   the real 512 x 100352 bf16 would otherwise hold 41 GB per rank. Each read checks that the values are
   finite.

Entry files are `<folder>/<sha256(prompt)[:16]>_<sha256(identity)[:16]>.safetensors`, one tensor named
`tensor`, the full key as metadata (kind, format, prompt, encoder), written atomically. A file written for
another key, unreadable or truncated is encoded again with a warning naming it. safetensors holds no
pickle, so reading an entry never runs code.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from cosmos_engine.atomic import remove_stale_temporaries
from cosmos_engine.data.entries import read_entry, write_entry
from cosmos_engine.errors import DatasetError

log = logging.getLogger(__name__)

FORMAT = "1"  # bump when the stored layout changes: old entries stop matching
MEMO_FILE = "encoder_files.json"
ENCODE_BATCH = 8  # prompts per encoder call: what is held in memory before it is stored


class Encoder(Protocol):
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """B prompts -> embeddings [B, L, D]."""


class EncoderSource(Protocol):
    """A text encoder that is named without being loaded (`data.encoders.TextEncoderSource`)."""

    def prepare(self) -> None:
        """Make the encoder's folder usable (e.g. write a generated stand-in)."""

    def identity(self, memo_file: Path | None = None) -> str:
        """Names the encoder's files, dtype and recipe."""

    def load(self, device: torch.device) -> Encoder:
        """The encoder itself (expensive)."""


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TextEmbeddingStore:
    """The entries of one encoder identity in one folder."""

    def __init__(self, folder: str | Path, identity: str) -> None:
        self.folder, self.identity = Path(folder), identity

    def path(self, prompt: str) -> Path:
        return self.folder / f"{_short_hash(prompt)}_{_short_hash(self.identity)}.safetensors"

    def metadata(self, prompt: str) -> dict[str, str]:
        return {"kind": "text", "format": FORMAT, "prompt": prompt, "encoder": self.identity}

    def problem(self, prompt: str) -> str | None:
        """None when the entry's header says it holds exactly this prompt's embedding, else why not:
        "missing", or a reason to warn about. Reads the header only."""
        return self._read(prompt, values=False)[1]

    def load(self, prompt: str) -> torch.Tensor:
        """The cached embedding; DatasetError naming the file when it is missing or unusable."""
        tensor, problem = self._read(prompt, values=True)
        if problem is not None:
            raise DatasetError(f"{self.path(prompt)}: text embedding cache entry {problem}; delete it and start "
                               "again (the start encodes every missing prompt)")
        return tensor

    def _read(self, prompt: str, values: bool) -> tuple[torch.Tensor | None, str | None]:
        return read_entry(self.path(prompt), self.metadata(prompt), values=values)

    def store(self, prompt: str, embedding: torch.Tensor) -> None:
        write_entry(self.path(prompt), embedding, self.metadata(prompt))


class TextEmbeddings(Mapping):
    """prompt -> its cached embedding [L, D], read from disk at each access (nothing is kept)."""

    def __init__(self, store: TextEmbeddingStore, prompts: Sequence[str]) -> None:
        self.store = store
        self.prompts = sorted(set(prompts))
        self._known = frozenset(self.prompts)

    def __getitem__(self, prompt: str) -> torch.Tensor:
        if prompt not in self._known:
            raise KeyError(prompt)
        return self.store.load(prompt)

    def __iter__(self) -> Iterator[str]:
        return iter(self.prompts)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class TextStats:
    hits: int = 0
    encoded: int = 0
    corrupt: int = 0  # entries found unusable (unreadable, another key), encoded again


def cached_embeddings(prompts: Sequence[str], folder: str | Path, source: EncoderSource,
                      device: torch.device | str = "cpu") -> tuple[TextEmbeddings, TextStats]:
    """The embeddings of `prompts`, encoding the ones the cache in `folder` lacks (see the module docstring).
    Collective under torchrun: every rank calls it. The stats are this rank's."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"cached_embeddings: 'prompts' must be a non-empty sequence of strings, got {prompts!r}")
    folder, device = Path(folder), torch.device(device)
    distinct = sorted(set(prompts))
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    stats = TextStats()
    if rank == 0:
        if folder.is_dir():
            remove_stale_temporaries(folder)  # what killed writers left
        store = _fill(distinct, folder, source, device, stats)
    if distributed:
        dist.barrier()
    if rank != 0:
        store = _fill(distinct, folder, source, device, stats)
        if stats.encoded:
            log.warning("rank %d: %d text embeddings rank 0 cached are not visible in %s (is the folder shared by "
                        "all ranks?); this rank encoded them itself", rank, stats.encoded, folder)
    return TextEmbeddings(store, distinct), stats


def _fill(prompts: list[str], folder: Path, source: EncoderSource, device: torch.device,
          stats: TextStats) -> TextEmbeddingStore:
    source.prepare()
    store = TextEmbeddingStore(folder, source.identity(folder / MEMO_FILE))
    missing = []
    for prompt in prompts:
        problem = store.problem(prompt)
        if problem is None:
            stats.hits += 1
            continue
        if problem != "missing":
            log.warning("text embedding cache entry %s is %s; encoding it again", store.path(prompt), problem)
            stats.corrupt += 1
        missing.append(prompt)
    if missing:
        encoder = source.load(device)
        with torch.inference_mode():
            for start in range(0, len(missing), ENCODE_BATCH):
                batch = missing[start:start + ENCODE_BATCH]
                for prompt, embedding in zip(batch, encoder.encode(batch)):
                    store.store(prompt, embedding)
                stats.encoded += len(batch)
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the encoder's memory goes back before the DiT is built
    log.info("text embeddings %s: %d cached, %d encoded (%d of them unusable before)", folder, stats.hits,
             stats.encoded, stats.corrupt)
    return store
