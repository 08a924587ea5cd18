"""Training data: turn clips into a dataset, decode windows, sample them resumably, cache their latents.

* `prepare`: folder of clips (or procedural ones, `synthetic`) -> DATASET/videos, metas, manifest.json.
* `video_io`: probe, hash, encode, the official resize; atomic file writes.
* `decode_pyav` (CPU, FFmpeg) and `decode_dali` (GPU, NVDEC): uint8 frames by index, one contract.
* `dataset`: the dataset index, decoded windows, the resumable `WindowSampler`, `build_loader` (workers,
  pinned memory, data-wait time).
* `cache`: VAE latents of fixed windows and caption embeddings, encoded once, keyed by content.

`train/data.py` assembles these for a training run.
"""
