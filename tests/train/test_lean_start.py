"""A run whose captions are all cached never constructs the text encoder (the 7B Reason1 model in production):
its identity comes from the memoised file hashes and the embeddings from the cache."""

from __future__ import annotations

import torch

from cosmos_engine.cli import main as cli_main
from cosmos_engine.models import text_encoder
from tests.train.runs import RECIPE, run_args


def test_a_run_with_every_caption_cached_never_builds_the_text_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGINAIRE_OUTPUT_ROOT", str(tmp_path / "runs"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; a shared 2-core machine makes a second thread slower
    built = []
    original = text_encoder.TextEncoder.__init__

    def counting_init(self, *args, **kwargs):
        built.append(args[0] if args else kwargs.get("folder"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(text_encoder.TextEncoder, "__init__", counting_init)
    try:
        dataset = tmp_path / "dataset"
        # `prepare --cache` fills the latent and caption caches as the run would: the encoder is built once here.
        assert cli_main(["prepare", "--synthetic", "1", "--out", str(dataset), "--cache", str(RECIPE)]) == 0
        assert len(built) == 1
        assert (dataset / "cache" / "text" / "encoder_files.json").is_file()  # the folder's hashes, remembered
        assert cli_main(run_args(dataset, "lean", 1, 1)) == 0
        assert len(built) == 1, f"the run built the text encoder again from {built[1:]}"
    finally:
        torch.set_num_threads(threads)
