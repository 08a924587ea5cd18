"""The text-embedding cache of training and inference (`data.text_embeddings`), with a stand-in encoder source
that counts its loads and the prompts it encodes: each prompt is encoded once, ever; a start with every
prompt cached loads no encoder; entries are read lazily (memory does not grow with the number of prompts);
under torchrun rank 0 alone encodes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cosmos_engine.data.text_embeddings import TextEmbeddingStore, cached_embeddings
from cosmos_engine.errors import DatasetError

WORKER = Path(__file__).with_name("text_embeddings_worker.py")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: on a shared 2-core machine a second OpenMP thread waiting for a descheduled sibling makes
    each read ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CountingSource:
    """An encoder source and its encoder in one: [B, tokens, width], a pseudo-random function of each prompt."""

    def __init__(self, name: str = "stand-in-text/v1", tokens: int = 8, width: int = 16) -> None:
        self.name, self.tokens, self.width = name, tokens, width
        self.loads, self.encoded = 0, []

    def prepare(self) -> None:
        pass

    def identity(self, memo_file: Path | None = None) -> str:
        return self.name

    def load(self, device: torch.device) -> CountingSource:
        self.loads += 1
        return self

    def encode(self, prompts: list[str]) -> torch.Tensor:
        self.encoded.extend(prompts)
        return torch.stack([expected(p, self.tokens, self.width) for p in prompts])


def expected(prompt: str, tokens: int = 8, width: int = 16) -> torch.Tensor:
    seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    return torch.randn(tokens, width, generator=torch.Generator().manual_seed(seed))


def test_each_prompt_is_encoded_once_and_a_warm_start_loads_no_encoder(tmp_path):
    first = CountingSource()
    embeddings, stats = cached_embeddings(["a", "b", "a"], tmp_path, first)
    assert (first.loads, sorted(first.encoded), stats.encoded, stats.hits) == (1, ["a", "b"], 2, 0)
    assert set(embeddings) == {"a", "b"} and len(embeddings) == 2
    assert torch.equal(embeddings["a"], expected("a"))
    with pytest.raises(KeyError):
        embeddings["c"]

    again = CountingSource()
    embeddings, stats = cached_embeddings(["b", "a"], tmp_path, again)
    assert (again.loads, again.encoded, stats.hits) == (0, [], 2)
    assert torch.equal(embeddings["b"], expected("b"))
    more = CountingSource()
    cached_embeddings(["a", "c"], tmp_path, more)
    assert (more.loads, more.encoded) == (1, ["c"])  # only the missing prompt
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_another_encoder_identity_misses_the_cache(tmp_path):
    cached_embeddings(["a"], tmp_path, CountingSource())
    other = CountingSource("stand-in-text/v2")
    cached_embeddings(["a"], tmp_path, other)
    assert other.encoded == ["a"]
    assert cached_embeddings(["a"], tmp_path, CountingSource())[1].hits == 1  # the first entry is still there


def test_unusable_entries_are_encoded_again_with_a_warning(tmp_path, caplog):
    prompts = ["truncated", "garbage", "foreign", "folder"]
    cached_embeddings(prompts, tmp_path, CountingSource())
    store = TextEmbeddingStore(tmp_path, "stand-in-text/v1")
    store.path("truncated").write_bytes(store.path("truncated").read_bytes()[:-7])
    store.path("garbage").write_bytes(b"not a safetensors file")
    shutil.copyfile(store.path("folder"), store.path("foreign"))  # a valid file, but written for another prompt
    store.path("folder").unlink()
    store.path("folder").mkdir()
    source = CountingSource()
    with caplog.at_level(logging.WARNING):
        embeddings, stats = cached_embeddings(prompts, tmp_path, source)
    assert sorted(source.encoded) == sorted(prompts) and stats.corrupt == 4
    for prompt, why in (("truncated", "unreadable"), ("garbage", "unreadable"), ("foreign", "written for another key"),
                        ("folder", "a folder, not a file")):
        assert f"{store.path(prompt)} is {why}" in caplog.text
        assert torch.equal(embeddings[prompt], expected(prompt))


def test_a_poisoned_entry_is_named_when_read(tmp_path):
    embeddings, _ = cached_embeddings(["a"], tmp_path, CountingSource())
    store = embeddings.store
    bad = expected("a")
    bad[0, :3] = float("nan")
    save_file({"tensor": bad}, str(store.path("a")), metadata=store.metadata("a"))
    with pytest.raises(DatasetError, match=f"{store.path('a')}: text embedding cache entry poisoned: 3 of its 128"):
        embeddings["a"]


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_memory_does_not_grow_with_the_number_of_cached_prompts(tmp_path):
    """400 distinct prompts at the real 512 tokens but the tiny encoder's width (96, fp32): 192 KiB each, 75 MiB
    in all, which the old eager dict held for the whole run. Reading every entry through the mapping, as the
    batches do, must keep the resident memory within 16 MiB of where it started (about 80 entries' worth:
    room for allocator and page-cache noise, far below holding them)."""
    prompts = [f"caption {i}" for i in range(400)]
    cached_embeddings(prompts, tmp_path, CountingSource(tokens=512, width=96))
    warm = CountingSource(tokens=512, width=96)
    embeddings, _ = cached_embeddings(prompts, tmp_path, warm)
    assert warm.loads == 0
    per_entry = 512 * 96 * 4
    start, peak, total = _rss_bytes(), 0, 0.0
    for prompt in embeddings:
        total += float(embeddings[prompt].sum())
        peak = max(peak, _rss_bytes())
    assert total != 0.0
    growth = peak - start
    assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB reading {len(prompts)} entries of " \
                                f"{per_entry / 2**10:.0f} KiB ({len(prompts) * per_entry / 2**20:.0f} MiB in all)"


def test_two_gloo_ranks_encode_each_caption_once_in_total(tmp_path):
    """A cold start, then a warm one, in one torchrun job of 2 ranks."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(WORKER), str(tmp_path / "cache"), str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    cold, warm = ([json.loads((tmp_path / f"{start}{r}.json").read_text()) for r in range(2)] for start in ("cold", "warm"))
    captions = [f"caption {i}" for i in range(6)]
    assert sorted(cold[0]["encoded"] + cold[1]["encoded"]) == captions  # once each, in total
    assert (cold[0]["loads"], cold[1]["loads"]) == (1, 0)  # rank 0 alone loaded an encoder
    assert cold[0]["sums"] == cold[1]["sums"]  # and rank 1 reads what it wrote
    assert [(w["loads"], w["encoded"]) for w in warm] == [(0, []), (0, [])]
    assert warm[0]["sums"] == cold[0]["sums"]
