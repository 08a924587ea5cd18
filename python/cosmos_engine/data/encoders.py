"""The frozen encoders a recipe's [model] table names, as training and inference both build them.

`[model] vae_path` / `text_encoder_path`; left empty, the tiny flavor uses a seeded random tiny VAE and a
tiny random Reason1 stand-in (written once into a cache folder the caller names), so the tiny recipes need
no download. The 2B flavor requires both paths.

The text encoder is described (`TextEncoderSource`) rather than built: its identity comes from its files,
so `data.text_embeddings` loads the 7B model only when a prompt is missing from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cosmos_engine.config.schema import ModelConfig
from cosmos_engine.errors import RecipeError
from cosmos_engine.models.flavors import parameter_dtype, vae_config, vae_dtype
from cosmos_engine.models.text_encoder import TextEncoder, encoder_identity, tiny_encoder
from cosmos_engine.models.wan_vae import WanVAE, load_vae


def build_vae(model_cfg: ModelConfig, device: torch.device) -> WanVAE:
    dtype = vae_dtype(model_cfg.vae_dtype, torch.device(device).type)
    if model_cfg.vae_path:
        return load_vae(Path(model_cfg.vae_path).absolute(), vae_config(model_cfg.flavor), device=device, dtype=dtype)
    if model_cfg.flavor != "tiny":
        raise RecipeError(f"model.vae_path is empty; the {model_cfg.flavor!r} flavor needs the Wan2.1 VAE weights "
                          "(tokenizer.pth of Cosmos-Predict2.5-2B)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random tiny VAE every time, so its cache identity is stable
        vae = WanVAE(vae_config("tiny"))
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


@dataclass(frozen=True)
class TextEncoderSource:
    """Where a text encoder comes from: its folder, its compute dtype, and whether the folder is the seeded
    tiny stand-in (written by `prepare` when missing or damaged)."""

    folder: Path
    dtype: torch.dtype
    tiny: bool = False

    def prepare(self) -> None:
        """Make the folder usable: write the tiny stand-in if needed (the real folder is the user's)."""
        if self.tiny:
            tiny_encoder(self.folder, seed=0)

    def identity(self, memo_file: Path | None = None) -> str:
        """`encoder_identity` of the folder, its file hashes remembered in `memo_file`; loads nothing."""
        return encoder_identity(self.folder, self.dtype, memo_file)

    def load(self, device: torch.device) -> TextEncoder:
        return TextEncoder(self.folder, device=device, dtype=self.dtype)


def text_encoder_source(model_cfg: ModelConfig, tiny_folder: Path) -> TextEncoderSource:
    """The recipe's text encoder; `tiny_folder` is where the tiny flavor keeps its stand-in."""
    dtype = parameter_dtype(model_cfg.dtype)
    if model_cfg.text_encoder_path:
        return TextEncoderSource(Path(model_cfg.text_encoder_path).absolute(), dtype)
    if model_cfg.flavor != "tiny":
        raise RecipeError(f"model.text_encoder_path is empty; the {model_cfg.flavor!r} flavor needs a local copy "
                          "of nvidia/Cosmos-Reason1-7B")
    return TextEncoderSource(Path(tiny_folder).absolute(), dtype, tiny=True)
