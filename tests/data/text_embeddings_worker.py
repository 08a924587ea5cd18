"""Run by test_text_embeddings.py under torchrun (gloo): every rank asks for the same six captions' embeddings
in FOLDER twice, a cold start then a warm one (`FOLDER OUT`), and writes to OUT/{cold,warm}<rank>.json how
often it loaded the stand-in encoder, what it encoded and the sums of the embeddings it reads back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cosmos_engine.data.text_embeddings import cached_embeddings  # noqa: E402
from tests.data.test_text_embeddings import CountingSource  # noqa: E402


def main(folder: str, out: str) -> None:
    dist.init_process_group("gloo")
    captions = [f"caption {i}" for i in range(6)]
    for start in ("cold", "warm"):
        source = CountingSource()
        embeddings, _ = cached_embeddings(captions[::-1], folder, source)  # any order: the ranks agree on the set
        report = {"loads": source.loads, "encoded": source.encoded,
                  "sums": [float(embeddings[c].sum()) for c in captions]}
        (Path(out) / f"{start}{dist.get_rank()}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
