"""The Wan2.1 causal video VAE as Cosmos-Predict2.5 2B uses it (official `predict2/tokenizers/wan2pt1.py`).

Top to bottom: the latent normalisation constants, `VAEConfig` (the official `WanVAE_` argument names),
`FeatureCache`, the layers (causal conv, RMS norm, resample, residual and attention blocks), the encoder
and decoder, `WanVAE` (encode / decode, untiled and tiled), and `load_vae` for the official weights file.
Attribute names are the official state-dict keys (`encoder.downsamples.5.time_conv.weight`, ...), so the
official `tokenizer.pth` loads with no mapping.

What the official model does, all reproduced here (reference/vae_data_io.md §1):
* 8x spatial and 4x temporal compression, causal in time: T_latent = 1 + (T - 1) // 4. A video has
  1 + 4k frames and a height and width that are multiples of 8 (the stride-2 convs pad right/bottom, so
  other sizes would not come back at their size).
* Every 3-D conv pads only the past (`ops.causal_conv3d`). The video goes through in temporal chunks:
  encode takes frame 0 alone, then `temporal_window` frames at a time; decode takes one latent frame at a
  time. Each causal layer keeps the last input frames of the previous chunk in a `FeatureCache` that the
  caller creates for one pass and hands down every forward. Chunking changes memory, not results.
* downsample3d: output frame 0 is spatially downsampled frame 0 (no temporal conv); output j >= 1 is the
  stride-2 temporal conv over frames (2j-2, 2j-1, 2j). upsample3d: latent frame 0 passes through; the later
  frames form their own causal sequence for the temporal conv (zeros in front, not frame 0), each giving two
  output frames (first and second half of the 2C channels).
* RMS norm is F.normalize over channels * sqrt(C) * gamma (no epsilon inside a mean, no bias).
* Attention only in the middle blocks: per frame, one head as wide as the channels, no mask.
* Only the encoder mean `mu` (first z_dim of the 2*z_dim output channels) is used; it is normalised per
  channel with fixed constants (`latent_normalization`).

Precision: the official 2B pipeline casts the VAE to bf16 and runs it with no fp32 islands
(`vae.to(torch.bfloat16)` does the same here); the normalisation then happens in bf16 too. In fp32 this
module matches the official fp32 reference tensors to ~1e-6 relative.

Tiling (`tiled=True`): the layers before the encoder's middle blocks and after the decoder's middle blocks
only mix a bounded spatial neighbourhood, so they run on overlapping spatial tiles, each through the whole
video with its own cache, and are blended; the middle blocks (global per-frame attention) run untiled at
1/8 resolution. With an overlap of at least 2 * reach + 1 output pixels the blend only ever mixes tile
pixels that saw their full neighbourhood, and tiled output equals untiled output to float rounding.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cosmos_engine import ops
from cosmos_engine.ops import _backend
from cosmos_engine.errors import CheckpointError

log = logging.getLogger(__name__)

# Per-channel latent statistics of the real model (official `WanVAE.__init__`).
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

# Frames of past context a temporal kernel of 3 needs.
CACHE_T = 2


def latent_normalization() -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, inv_std) as the official model really uses them, as fp32 tensors of 16.

    The official builds `mean` and `std` as bf16 tensors and `inv_std = 1.0 / std` in bf16, so both
    constants are bf16-rounded: mean is LATENT_MEAN rounded to bf16 (e.g. -0.7571 -> -0.7578125) and
    inv_std is the bf16 reciprocal of the bf16-rounded std (2.8184 -> 2.8125 -> 0.35546875, not 1/2.8184).
    Encode computes (mu - mean) * inv_std and decode z / inv_std + mean (a division, not a product with
    std). Reproducing the rounding matters: it shifts latents by up to ~4e-3."""
    mean = torch.tensor(LATENT_MEAN, dtype=torch.bfloat16)
    inv_std = 1.0 / torch.tensor(LATENT_STD, dtype=torch.bfloat16)
    return mean.float(), inv_std.float()


@dataclass(frozen=True)
class VAEConfig:
    """Constructor arguments of the official `WanVAE_`, with its names (including the official spelling
    `temperal_downsample`); `VAEConfig(**case["config"])` builds one and unknown names are an error.
    Defaults are the 2B model's values."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    # Pixel frames per encoder chunk after the first frame: 4 is the official default, the 2B experiments
    # set 16. Both give the same latents; a larger window is faster and takes more memory.
    temporal_window: int = 4

    def __post_init__(self) -> None:
        for name in ("dim_mult", "attn_scales", "temperal_downsample"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"VAEConfig: temperal_downsample needs {len(self.dim_mult) - 1} entries (one per "
                             f"stage transition of dim_mult={self.dim_mult}), got {self.temperal_downsample}")
        if self.temporal_window < 1 or self.temporal_window % self.temporal_factor:
            raise ValueError(f"VAEConfig: temporal_window must be a positive multiple of the temporal "
                             f"compression {self.temporal_factor}, got {self.temporal_window}")

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


class FeatureCache:
    """What each causal layer remembers from the previous temporal chunk, for one encode or decode pass.

    The caller creates one per pass (and one per spatial tile) and hands it down every forward; entries
    are keyed by the layer itself, so the modules hold no state between calls and two passes never
    share frames by accident."""

    def __init__(self) -> None:
        self._frames: dict[nn.Module, torch.Tensor | None] = {}

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        return self._frames.get(layer)

    def put(self, layer: nn.Module, frames: torch.Tensor) -> None:
        self._frames[layer] = frames

    def first_visit(self, layer: nn.Module) -> bool:
        """True the first time `layer` asks during this pass (its input then starts at frame 0)."""
        first = layer not in self._frames
        self._frames.setdefault(layer, None)
        return first


def _last_frames(x: torch.Tensor, context: torch.Tensor | None, count: int) -> torch.Tensor:
    """The last `count` frames of the sequence `context ++ x` (fewer at the start of the video).

    A view of x when x has no more than `count` frames (then keeping x alive costs nothing extra: the first
    chunk, and every chunk of the low-resolution layers); a copy of its last `count` frames when it has
    more, so the cache does not keep a whole chunk alive per layer (that would double the cache's share of
    the decode peak at full resolution). Only a chunk shorter than `count` after the first one needs the
    two joined (1-frame chunks at latent resolution: a 2-frame copy)."""
    frames = x.shape[2]
    if frames >= count or context is None:
        return x[:, :, -count:] if frames <= count else x[:, :, -count:].clone()
    return torch.cat([context[:, :, frames - count:], x], dim=2)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """x in the layout the compiled ops want (channels innermost, NDHWC / NHWC) on the kernel path; x as
    it is on the reference path, which is today's NCDHW computation. A no-op when x is already so."""
    if _backend.select(x.device) == "reference":
        return x
    return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)


def _causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, context: torch.Tensor | None,
                 padding: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """ops.causal_conv3d, its output kept in x's layout: the compiled op returns channels-last for a
    channels-last x, but the reference (F.conv3d after a cat) picks NCDHW for some shapes (the strided
    time convs), which `_channels_last` turns back (a no-op on the reference path and when already so)."""
    return _channels_last(ops.causal_conv3d(x, weight, bias, context, padding, stride))


class CausalConv3d(nn.Conv3d):
    """nn.Conv3d with causal temporal padding: `padding=(pt, ph, pw)` as in the official constructor means
    2*pt frames of past context in front (the previous chunk's last input frames, else zeros), none after,
    and ph/pw on both sides. With a cache it remembers its own last input frames for the next chunk."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.causal_padding = (2 * pt, ph, pw)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        past = self.causal_padding[0]
        context = None
        if cache is not None and past > 0:
            context = cache.get(self)
            cache.put(self, _last_frames(x, context, past))
        return _causal_conv(x, self.weight, self.bias, context, self.causal_padding, self.stride)


class RMSNorm(nn.Module):
    """The official `RMS_norm`: x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma, channels in dim 1,
    followed by SiLU when `silu` (`_run` fuses an RMSNorm with the nn.SiLU after it: `ops.rms_norm_silu`).
    gamma is (C, 1, 1, 1) for videos and (C, 1, 1) for the per-frame images of the attention block."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor, silu: bool = False) -> torch.Tensor:
        return ops.rms_norm_silu(x, self.gamma, silu)


def _frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W] for the per-frame 2-D layers (a view when x is channels-last:
    NDHWC memory is (B*T) frames of NHWC)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def _batch_to_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    bt, c, h, w = x.shape
    return x.reshape(bt // frames, frames, c, h, w).transpose(1, 2)


class Upsample2x(nn.Module):
    """Nearest-exact 2x spatial upsampling (a pure copy, exact in every dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest-exact")


class Resample(nn.Module):
    """Per-frame 2x spatial down/upsampling (`resample.1` is the Conv2d), plus a causal 2x temporal
    down/upsampling (`time_conv`) for the 3d modes; see the module docstring for the temporal rules."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            raise ValueError(f"Resample: unknown mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_upsample(x, cache)
        frames = x.shape[2]
        x = _batch_to_frames(self.resample(_frames_to_batch(x)), frames)
        if self.mode == "downsample3d":
            x = self._time_downsample(x, cache)
        return x

    def _time_upsample(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, 2T (- 1 on the first chunk), H, W]."""
        head = None
        if cache.first_visit(self):
            head, x = x[:, :, :1], x[:, :, 1:]
            if x.shape[2] == 0:
                return head
        y = self.time_conv(x, cache)  # [B, 2C, n, H, W]: channels [0, C) the earlier, [C, 2C) the later frame
        b, c2, n, h, w = y.shape
        # Interleave the halves in time with one copy into a tensor of y's layout (channels-last stays so).
        out = torch.empty((b, c2 // 2, 2 * n, h, w), dtype=y.dtype, device=y.device,
                          memory_format=torch.channels_last_3d if y.stride(1) == 1 else torch.contiguous_format)
        out.unflatten(2, (n, 2)).copy_(y.unflatten(1, (2, c2 // 2)).permute(0, 2, 3, 1, 4, 5))
        return out if head is None else torch.cat([head, out], dim=2)

    def _time_downsample(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, (T + 1) // 2 on the first chunk, T // 2 later, H, W]."""
        conv = self.time_conv
        context = cache.get(self)
        cache.put(self, _last_frames(x, None, 1))
        if context is not None:  # the windows of this chunk start at the previous chunk's last frame
            return _causal_conv(x, conv.weight, conv.bias, context, (1, 0, 0), conv.stride)
        if x.shape[2] == 1:
            return x
        windows = _causal_conv(x, conv.weight, conv.bias, None, (0, 0, 0), conv.stride)
        return torch.cat([x[:, :, :1], windows], dim=2)


class ResidualBlock(nn.Module):
    """x + f(x), f = RMSNorm, SiLU, causal conv 3x3x3, RMSNorm, SiLU, dropout, causal conv 3x3x3 (state
    indices 0, 2, 3, 6); the skip is a 1x1x1 conv when the width changes."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        return _run(self.residual, x, cache) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Per-frame single-head spatial self-attention with a residual: RMSNorm, 1x1 conv to q|k|v, softmax
    attention over the H*W positions (scale 1/sqrt(C)), 1x1 output conv. The head is as wide as the
    channels (384 in the real model), wider than the fused attention kernels take, and the whole block runs
    at 1/8 resolution, so it calls PyTorch's SDPA directly as the official does."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(_frames_to_batch(x))
        # [B*T, 3C, H, W] -> [B*T, 1, H*W, 3C]: a view of a channels-last conv output, else one copy.
        qkv = self.to_qkv(y).permute(0, 2, 3, 1).reshape(b * t, 1, h * w, 3 * c)
        q, k, v = qkv.chunk(3, dim=-1)  # [B*T, 1, H*W, C] each
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.reshape(b * t, h, w, c).permute(0, 3, 1, 2)  # a channels-last view [B*T, C, H, W]
        return _batch_to_frames(self.proj(y), t) + x


_TAKES_CACHE = (CausalConv3d, ResidualBlock, Resample)


def _run(layers: nn.Sequential, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    """Run `layers` in order; an RMSNorm followed by nn.SiLU (residual blocks, heads) runs as one op."""
    fuse_next = False
    for i, layer in enumerate(layers):
        if fuse_next:  # this SiLU ran inside the previous RMSNorm
            fuse_next = False
            continue
        if isinstance(layer, RMSNorm):
            fuse_next = i + 1 < len(layers) and isinstance(layers[i + 1], nn.SiLU)
            x = layer(x, silu=fuse_next)
        else:
            x = layer(x, cache) if isinstance(layer, _TAKES_CACHE) else layer(x)
    return x


def _reach(layers: nn.Module, pixel: float) -> float:
    """How far (in output pixels) an output pixel of `layers` can see, given the size of one input pixel in
    output pixels: each k x k conv adds (k // 2) pixels of its level, a stride-2 conv (k - 1) because the
    padding is on one side, and each 2x upsampling halves the level's pixel."""
    reach = 0.0
    for m in layers.modules():
        if isinstance(m, Upsample2x):
            pixel /= 2
        elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
            k, s = m.kernel_size[-1], m.stride[-1]
            reach += ((k - 1) if s > 1 else k // 2) * pixel
            pixel *= s
    return reach


class Encoder3d(nn.Module):
    """Pixels [B, 3, T, H, W] -> 2*z_dim channels at [T', H/8, W/8] (official `Encoder3d`)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        downsamples: list[nn.Module] = []
        scale = 1.0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                downsamples.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    downsamples.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                downsamples.append(Resample(out_dim, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*downsamples)
        self.middle = nn.Sequential(ResidualBlock(out_dim, out_dim, cfg.dropout), AttentionBlock(out_dim),
                                    ResidualBlock(out_dim, out_dim, cfg.dropout))
        self.head = nn.Sequential(RMSNorm(out_dim), nn.SiLU(), CausalConv3d(out_dim, 2 * cfg.z_dim, 3, padding=1))

    def forward_local(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """conv1 and the down stages: each output pixel sees a bounded neighbourhood (tileable)."""
        return _run(self.downsamples, self.conv1(_channels_last(x), cache), cache)

    def forward_global(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """The middle blocks (per-frame attention over the whole frame) and the head."""
        return _run(self.head, _run(self.middle, _channels_last(x), cache), cache)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        return self.forward_global(self.forward_local(x, cache), cache)

    def local_reach(self, spatial_factor: int) -> float:
        """Reach of `forward_local` in latent pixels."""
        return _reach(nn.ModuleList([self.conv1, self.downsamples]), 1.0 / spatial_factor)


class Decoder3d(nn.Module):
    """Latent [B, z_dim, T', h, w] -> pixels [B, 3, 1 + 4(T'-1), 8h, 8w] (official `Decoder3d`)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * u for u in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        scale = 1.0 / 2 ** (len(cfg.dim_mult) - 2)
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0], cfg.dropout), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0], cfg.dropout))
        upsamples: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:  # the previous stage's upsampling conv halved the channels
                in_dim //= 2
            for _ in range(cfg.num_res_blocks + 1):
                upsamples.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    upsamples.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                upsamples.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*upsamples)
        self.head = nn.Sequential(RMSNorm(out_dim), nn.SiLU(), CausalConv3d(out_dim, 3, 3, padding=1))

    def forward_global(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """conv1 and the middle blocks (per-frame attention over the whole frame)."""
        return _run(self.middle, self.conv1(_channels_last(x), cache), cache)

    def forward_local(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """The up stages and the head: each output pixel sees a bounded neighbourhood (tileable)."""
        return _run(self.head, _run(self.upsamples, _channels_last(x), cache), cache)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        return self.forward_local(self.forward_global(x, cache), cache)

    def local_reach(self, spatial_factor: int) -> float:
        """Reach of `forward_local` in output pixels."""
        return _reach(nn.ModuleList([self.upsamples, self.head]), float(spatial_factor))


@dataclass(frozen=True)
class _Tile:
    """One spatial tile: [y0, y1) x [x0, x1) in latent pixels, and its blend weights in output pixels."""

    y0: int
    y1: int
    x0: int
    x1: int
    weight: torch.Tensor  # [out_h, out_w]


def _tile_starts(length: int, size: int, overlap: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, size - overlap))
    return starts + [length - size]


def _ramp(start: int, stop: int, length: int, scale: int, overlap: int, margin: int) -> torch.Tensor:
    """Blend weights along one axis, in output pixels, for the tile [start, stop) (latent pixels) of an
    axis of `length`: 0 over the `margin` pixels next to an inner tile edge (they lack part of their
    neighbourhood), then a linear ramp to 1 across the rest of the overlap; 1 at the image border."""
    n = (stop - start) * scale
    d = torch.arange(n, dtype=torch.float64) + 0.5
    weight = torch.ones(n, dtype=torch.float64)
    width = max(overlap - 2 * margin, 1)
    if start > 0:
        weight = torch.minimum(weight, ((d - margin) / width).clamp(0, 1))
    if stop < length:
        weight = torch.minimum(weight, ((n - d - margin) / width).clamp(0, 1))
    return weight


def _tiles(h: int, w: int, size: int, overlap: int, scale: int, reach: float) -> list[_Tile]:
    """Overlapping tiles covering an h x w latent grid; `size`/`overlap` in latent pixels, weights in
    output pixels (`scale` per latent pixel). The margin is the local stages' reach when the overlap
    leaves room for it on both sides, else as much as fits."""
    overlap_out = overlap * scale
    margin = max(0, min(math.ceil(reach), (overlap_out - 1) // 2))
    tiles = []
    for y0 in _tile_starts(h, size, overlap):
        for x0 in _tile_starts(w, size, overlap):
            y1, x1 = min(y0 + size, h), min(x0 + size, w)
            wy = _ramp(y0, y1, h, scale, overlap_out, margin)
            wx = _ramp(x0, x1, w, scale, overlap_out, margin)
            tiles.append(_Tile(y0, y1, x0, x1, (wy[:, None] * wx[None, :]).float()))
    return tiles


class WanVAE(nn.Module):
    """The official `WanVAE_` plus the 2B model's latent normalisation (official `WanVAE` wrapper).

    encode(video) -> normalised latent, decode(latent) -> video, encode_mu(video) -> raw encoder mean.
    Videos are [B, 3, 1 + 4k, H, W] in [-1, 1] with H, W multiples of 8; latents [B, 16, 1 + k, H/8, W/8].
    Inputs are cast to the parameter dtype and outputs back to the input dtype. Decoded videos are not
    clamped (callers map (1 + x) / 2 and clamp).

    Tiled mode (`tiled=True`, `tile_size` and `tile_overlap` in pixels, multiples of 8) bounds memory to
    about one tile of full-resolution activations instead of a whole frame. Tolerance: with
    `tile_overlap` >= `exact_tile_overlap()` (200 px for the 2B model, the default), tiled and untiled
    outputs agree within 1e-5 of max|output| in fp32 (float rounding of differently shaped convs and of
    the blend); a smaller overlap is faster but only approximate near the seams.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        if config.z_dim != len(LATENT_MEAN):
            raise ValueError(f"WanVAE: the latent normalisation constants have {len(LATENT_MEAN)} channels, "
                             f"but z_dim={config.z_dim}")
        self.config = config
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)
        mean, inv_std = latent_normalization()
        # Not in the official file (which holds 194 parameters and no buffers), so not persistent.
        self.register_buffer("latent_mean", mean.view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latent_inv_std", inv_std.view(1, -1, 1, 1, 1), persistent=False)
        self._identity_stamp: tuple | None = None
        self._identity = ""

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    @property
    def identity(self) -> str:
        """Names these exact weights and this dtype for cache keys (data/cache.py): sha256 of the config and
        every parameter's bytes. Recomputed only after a parameter changed (moved, cast or written in
        place), so reading it is cheap."""
        stamp = tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters())
        if self._identity_stamp != stamp:
            digest = hashlib.sha256(f"wan2.1-vae|{self.config}|{self.dtype}".encode())
            for name, p in self.named_parameters():
                digest.update(name.encode())
                digest.update(p.detach().reshape(-1).cpu().view(torch.uint8).numpy())
            self._identity_stamp, self._identity = stamp, digest.hexdigest()
        return self._identity

    # ---- public API ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, tiled: bool = False, tile_size: int = 512,
               tile_overlap: int = 200) -> torch.Tensor:
        """Video [B, 3, 1 + 4k, H, W] in [-1, 1] -> normalised latent [B, z_dim, 1 + k, H/8, W/8]."""
        mu = self._encode_mu(video, tiled, tile_size, tile_overlap)
        return ((mu - self.latent_mean.to(mu.dtype)) * self.latent_inv_std.to(mu.dtype)).to(video.dtype)

    @torch.no_grad()
    def encode_mu(self, video: torch.Tensor, *, tiled: bool = False, tile_size: int = 512,
                  tile_overlap: int = 200) -> torch.Tensor:
        """The raw encoder mean (no normalisation), [B, z_dim, 1 + k, H/8, W/8]."""
        return self._encode_mu(video, tiled, tile_size, tile_overlap).to(video.dtype)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, *, tiled: bool = False, tile_size: int = 512,
               tile_overlap: int = 200) -> torch.Tensor:
        """Normalised latent [B, z_dim, T', h, w] -> video [B, 3, 1 + 4(T' - 1), 8h, 8w], about [-1, 1]."""
        self._check_latent(latent)
        z = latent.to(self.dtype)
        z = z / self.latent_inv_std.to(z.dtype) + self.latent_mean.to(z.dtype)
        x = self.conv2(_channels_last(z))
        if tiled:
            video = self._decode_tiled(x, *self._tile_args(tile_size, tile_overlap))
        else:
            # Each chunk's frames go straight into the (NCDHW) video: no list of chunks and no cat, so the
            # output is held once.
            cache = FeatureCache()
            tf = self.config.temporal_factor
            video = torch.empty(x.shape[0], 3, 1 + (x.shape[2] - 1) * tf, *(s * self.config.spatial_factor
                                for s in x.shape[3:]), dtype=x.dtype, device=x.device)
            frame = 0
            for i in range(x.shape[2]):
                out = self.decoder(x[:, :, i:i + 1], cache)
                video[:, :, frame:frame + out.shape[2]].copy_(out)
                frame += out.shape[2]
        return video.to(latent.dtype)

    def exact_tile_overlap(self) -> int:
        """The smallest `tile_overlap` (pixels, a multiple of 8) for which tiling is exact in both directions."""
        f = self.config.spatial_factor
        decode_px = 2 * math.ceil(self.decoder.local_reach(f)) + 1
        encode_px = (2 * math.ceil(self.encoder.local_reach(f)) + 1) * f
        return math.ceil(max(decode_px, encode_px) / f) * f

    # ---- encode / decode internals ----------------------------------------------------------------------

    def _chunks(self, frames: int) -> list[tuple[int, int]]:
        """Pixel-frame ranges of the official encode: frame 0 alone, then `temporal_window` at a time."""
        window = self.config.temporal_window
        return [(0, 1)] + [(a, min(a + window, frames)) for a in range(1, frames, window)]

    def _encode_mu(self, video: torch.Tensor, tiled: bool, tile_size: int, tile_overlap: int) -> torch.Tensor:
        self._check_video(video)
        x = video.to(self.dtype)
        chunks = self._chunks(x.shape[2])
        if tiled:
            out = self._encode_tiled(x, chunks, *self._tile_args(tile_size, tile_overlap))
        else:
            cache = FeatureCache()
            out = torch.cat([self.encoder(x[:, :, a:b], cache) for a, b in chunks], dim=2)
        return self.conv1(out)[:, :self.config.z_dim].contiguous()

    def _encode_tiled(self, x: torch.Tensor, chunks: list[tuple[int, int]], size: int, overlap: int) -> torch.Tensor:
        f, tf = self.config.spatial_factor, self.config.temporal_factor
        b, _, t, h, w = x.shape
        lat_h, lat_w, lat_t = h // f, w // f, 1 + (t - 1) // tf
        tiles = _tiles(lat_h, lat_w, size, overlap, 1, self.encoder.local_reach(f))
        features = None
        weight_sum = torch.zeros(lat_h, lat_w, dtype=torch.float32, device=x.device)
        for tile in tiles:
            cache = FeatureCache()
            crop = x[..., tile.y0 * f:tile.y1 * f, tile.x0 * f:tile.x1 * f]
            out = torch.cat([self.encoder.forward_local(crop[:, :, a:b], cache) for a, b in chunks], dim=2)
            if features is None:
                features = torch.zeros(b, out.shape[1], lat_t, lat_h, lat_w, dtype=_accumulator(out.dtype),
                                       device=x.device)
            weight = tile.weight.to(x.device)
            features[..., tile.y0:tile.y1, tile.x0:tile.x1] += out * weight.to(features.dtype)
            weight_sum[tile.y0:tile.y1, tile.x0:tile.x1] += weight
        features = (features / weight_sum.to(features.dtype)).to(x.dtype)
        # The middle blocks see whole frames, chunked as the official chunks them (in latent frames).
        cache = FeatureCache()
        lat_chunks = [(0, 1)] + [(1 + (a - 1) // tf, 1 + (b - 1) // tf) for a, b in chunks[1:]]
        return torch.cat([self.encoder.forward_global(features[:, :, a:b], cache) for a, b in lat_chunks], dim=2)

    def _decode_tiled(self, x: torch.Tensor, size: int, overlap: int) -> torch.Tensor:
        f, tf = self.config.spatial_factor, self.config.temporal_factor
        b, _, lat_t, lat_h, lat_w = x.shape
        cache = FeatureCache()
        features = torch.cat([self.decoder.forward_global(x[:, :, i:i + 1], cache) for i in range(lat_t)], dim=2)
        tiles = _tiles(lat_h, lat_w, size, overlap, f, self.decoder.local_reach(f))
        acc = _accumulator(x.dtype)
        video = torch.zeros(b, 3, 1 + (lat_t - 1) * tf, lat_h * f, lat_w * f, dtype=acc, device=x.device)
        weight_sum = torch.zeros(lat_h * f, lat_w * f, dtype=torch.float32, device=x.device)
        for tile in tiles:
            cache = FeatureCache()
            weight = tile.weight.to(x.device)
            ys, xs = slice(tile.y0 * f, tile.y1 * f), slice(tile.x0 * f, tile.x1 * f)
            frame = 0
            for i in range(lat_t):
                out = self.decoder.forward_local(features[:, :, i:i + 1, tile.y0:tile.y1, tile.x0:tile.x1], cache)
                video[:, :, frame:frame + out.shape[2], ys, xs] += out * weight.to(acc)
                frame += out.shape[2]
            weight_sum[ys, xs] += weight
        return (video / weight_sum.to(acc)).to(x.dtype)

    # ---- argument checks --------------------------------------------------------------------------------

    def _tile_args(self, tile_size: int, tile_overlap: int) -> tuple[int, int]:
        """Validate the tiling arguments (pixels) and return them in latent pixels."""
        f = self.config.spatial_factor
        if self.config.attn_scales:
            raise ValueError(f"WanVAE: tiling needs attn_scales=() (attention inside the stages sees whole "
                             f"frames), got attn_scales={self.config.attn_scales}")
        if tile_size < f or tile_size % f or tile_overlap < 0 or tile_overlap % f or tile_overlap >= tile_size:
            raise ValueError(f"WanVAE: tile_size and tile_overlap must be multiples of {f} pixels with "
                             f"0 <= tile_overlap < tile_size, got tile_size={tile_size}, tile_overlap={tile_overlap}")
        if tile_overlap < self.exact_tile_overlap():
            log.warning("WanVAE: tile_overlap=%d px is below %d px; tiled output is approximate near tile seams",
                        tile_overlap, self.exact_tile_overlap())
        return tile_size // f, tile_overlap // f

    def _check_video(self, video: torch.Tensor) -> None:
        f, tf = self.config.spatial_factor, self.config.temporal_factor
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"WanVAE.encode: 'video' must be [B, 3, T, H, W], got shape {tuple(video.shape)}")
        if not video.is_floating_point():
            raise TypeError(f"WanVAE.encode: 'video' must be a floating-point tensor in [-1, 1], got {video.dtype}")
        t, h, w = video.shape[2:]
        if (t - 1) % tf:
            below = 1 + tf * ((t - 1) // tf)
            raise ValueError(f"WanVAE.encode: 'video' of shape {tuple(video.shape)} has T={t} frames; the causal "
                             f"VAE needs 1 + {tf}k frames (e.g. {below} or {below + tf})")
        if h % f or w % f or h == 0 or w == 0:
            raise ValueError(f"WanVAE.encode: 'video' of shape {tuple(video.shape)} has H={h}, W={w}; both must be "
                             f"positive multiples of {f}")

    def _check_latent(self, latent: torch.Tensor) -> None:
        if latent.dim() != 5 or latent.shape[1] != self.config.z_dim or latent.shape[2] == 0:
            raise ValueError(f"WanVAE.decode: 'latent' must be [B, {self.config.z_dim}, T', h, w] with T' >= 1, "
                             f"got shape {tuple(latent.shape)}")
        if not latent.is_floating_point():
            raise TypeError(f"WanVAE.decode: 'latent' must be a floating-point tensor, got {latent.dtype}")


def encode_flops(config: VAEConfig, frames: int, height: int, width: int) -> float:
    """FLOPs of encoding one [3, frames, height, width] video untiled, counted by torch's FlopCounterMode
    (its convolutions and attention matmuls) on the meta device: the first frame and one more chunk are
    run, and every further chunk costs what that one did (the causal encoder works frame by frame, with
    the same cached context for every chunk after the first). Allocates nothing; about a second at 720p."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = WanVAE(config)

    def count(t: int) -> int:
        with _backend.force_backend("reference"), FlopCounterMode(display=False) as counter:
            vae.encode(torch.empty(1, 3, t, height, width, device="meta"))
        return counter.get_total_flops()

    first, with_chunk = count(1), count(1 + config.temporal_factor)
    return float(first + (frames - 1) // config.temporal_factor * (with_chunk - first))


from cosmos_engine.ops.reference import acc_dtype as _accumulator  # noqa: E402 (blending sums in fp32, fp64 for fp64)


def check_state_dict(model: nn.Module, state_dict: dict, source: str) -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped key of `state_dict`."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source}: expected a plain state dict (key -> tensor) in the official VAE layout")
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    misshaped = [f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})"
                 for k in sorted(expected.keys() & state_dict.keys()) if tuple(state_dict[k].shape) != expected[k]]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if keys:
            problems.append(f"{len(keys)} {what}: " + ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else ""))
    if problems:
        raise CheckpointError(f"{source}: not a Wan2.1 VAE state dict for {model.config}: " + "; ".join(problems))


def load_vae(path: str | Path, config: VAEConfig | None = None, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> WanVAE:
    """Build a WanVAE and load the official weights file (a plain state dict, read with weights_only=True).
    The official 2B pipeline runs it in bf16 (`dtype=torch.bfloat16`)."""
    path = Path(path)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: VAE weights file not found") from None
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: cannot read the VAE weights ({e})") from None
    model = WanVAE(config or VAEConfig())
    check_state_dict(model, state_dict, str(path))
    model.load_state_dict(state_dict)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
