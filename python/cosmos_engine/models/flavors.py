"""Named DiT configurations: "2b" (the official Video2World 2B network) and "tiny" (tests, CPU recipes).

"2b" is the `MinimalV1LVGDiT` constructor arguments of the NeMo post-training experiment (reference
dit_and_training.md §1.1): 28 blocks of width 2048, 16 heads of 128, 2,059,174,912 parameters.
"tiny" is the configuration of the official reference tensors (`dit_forward_backward.pt`): the same
structure (head dim 128, so the RoPE split 44/42/42 and the buffer sizes are the real ones; patch 1x2x2;
18 input channels; AdaLN-LoRA; text projection) shrunk to 2 blocks of width 256, so a forward and
backward take well under a second on a laptop CPU. Its text input is 96 channels wide.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from cosmos_engine.models.cosmos_dit import DiTConfig
from cosmos_engine.models.wan_vae import VAEConfig

Flavor = Literal["2b", "tiny"]

_2B: dict[str, Any] = {
    "max_img_h": 240,
    "max_img_w": 240,
    "max_frames": 128,
    "in_channels": 16,
    "out_channels": 16,
    "patch_spatial": 2,
    "patch_temporal": 1,
    "concat_padding_mask": True,
    "model_channels": 2048,
    "num_blocks": 28,
    "num_heads": 16,
    "mlp_ratio": 4.0,
    "atten_backend": "minimal_a2a",
    "crossattn_emb_channels": 1024,
    "use_crossattn_projection": True,
    "crossattn_proj_in_channels": 100352,
    "pos_emb_cls": "rope3d",
    "pos_emb_learnable": True,
    "pos_emb_interpolation": "crop",
    "min_fps": 1,
    "max_fps": 30,
    "use_adaln_lora": True,
    "adaln_lora_dim": 256,
    "rope_h_extrapolation_ratio": 3.0,
    "rope_w_extrapolation_ratio": 3.0,
    "rope_t_extrapolation_ratio": 1.0,
    "extra_per_block_abs_pos_emb": False,
    "rope_enable_fps_modulation": False,
    "sac_config": {"mode": "predict2_2b_720_aggressive", "every_n_blocks": 1},
    "n_dense_blocks": -1,
    "use_wan_fp32_strategy": True,
    "timestep_scale": 0.001,
}

_TINY: dict[str, Any] = {
    **_2B,
    "model_channels": 256,
    "num_blocks": 2,
    "num_heads": 2,
    "mlp_ratio": 2.0,
    "crossattn_emb_channels": 128,
    "crossattn_proj_in_channels": 96,
    "adaln_lora_dim": 24,
}

FLAVORS: dict[str, dict[str, Any]] = {"2b": _2B, "tiny": _TINY}


def dit_config(flavor: Flavor, **overrides: Any) -> DiTConfig:
    """The DiTConfig of `flavor` ("2b" or "tiny"), with optional official-name overrides."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown DiT flavor {flavor!r}; expected one of {sorted(FLAVORS)}")
    return DiTConfig(**{**FLAVORS[flavor], **overrides})


def vae_config(flavor: Flavor) -> VAEConfig:
    """The Wan2.1 VAE paired with a DiT flavor: the official 2B structure, or the same structure at width 16
    (a few seconds per 17-frame clip on a CPU) for the tiny recipes. Both compress 8x8 spatially, 4x in time,
    to 16 latent channels, which is what the DiT flavors take."""
    if flavor == "2b":
        return VAEConfig()
    if flavor == "tiny":
        return VAEConfig(dim=16)
    raise ValueError(f"unknown flavor {flavor!r}; expected one of {sorted(FLAVORS)}")


def parameter_dtype(name: str) -> torch.dtype:
    """The torch dtype of a recipe's `[model] dtype` ("bfloat16" or "float32")."""
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def vae_dtype(name: str, device_type: str) -> torch.dtype:
    """The VAE's compute dtype for a recipe's `[model] vae_dtype` on a device type ("cuda", "cpu", ...):
    "auto" is bfloat16 on a GPU, as the official tokenizer runs, and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return parameter_dtype(name)
