"""The Cosmos-Predict2.5 Video2World DiT: the official `MinimalV1LVGDiT` (on `MiniTrainDIT`), in one file.

Top to bottom: `DiTConfig` (the official constructor argument names), helpers, the small modules (patch
embedding, 3D RoPE, timestep embedding, RMSNorm, attention, MLP), the block, the final layer, `CosmosDiT`.
Attribute names are the official state-dict keys (`x_embedder.proj.1.weight`,
`blocks.3.self_attn.q_norm.weight`, `pos_embedder.dim_spatial_range`, the four `accum_*` buffers, ...), so
an official file loads with no mapping once `state_dict.strip_official_prefix` removed `net.`.

What the official network does on the Video2World path, all reproduced here:
* Input channels: latent (16) ++ condition mask (1; zeros for image data) ++ padding mask (1; resized from
  pixels to the latent size by nearest neighbour; all zeros in practice, but its patch weights exist).
* Patchify is channel-major (feature c*4 + m*2 + n for a 2x2 patch), unpatchify channel-minor
  (feature p1*32 + p2*16 + c). Both are right: that is how the weights were trained.
* Timesteps are multiplied by `timestep_scale` (0.001), embedded as a sinusoid with COSINE first. The
  RMS-normalised sinusoid is the AdaLN input `emb`; an MLP of the raw sinusoid is the AdaLN-LoRA term that
  is added to every modulation (all blocks and, its first 2D entries, the final layer).
* Timesteps [B, 1] modulate all tokens alike; timesteps [B, T] modulate each latent frame separately.
* Self-attention: per-head q/k RMSNorm (eps 1e-6) then 3D RoPE (rotate-half; 64 angles [t 22 | h 21 | w 21]
  written twice; NTK-scaled bases theta = 10000 * ratio^(d/(d-2))). Cross-attention attends to the text
  after the `crossattn_proj` Linear + exact GELU, without RoPE and without a mask.
* The RoPE exponents are registered buffers: `net.to(bfloat16)` rounds them, as it does in the official bf16
  net, and a checkpoint carries them. Frequencies are computed from the buffers at every call.

Precision islands (official `use_wan_fp32_strategy`). The island dtype is float32 (float64 for a float64
net, which the tests use as the exact reference); everything not listed runs in the parameter dtype
(bf16 in training and inference: patch embedding, text projection, q/k/v and output projections,
attention, MLP).
1. Timestep sinusoid, the `t_embedder` MLP and `t_embedding_norm`: island dtype.
2. AdaLN modulation linears of every block and of the final layer: island dtype (weights upcast). The block
   modulations (shift, scale, gate) are then cast to the parameter dtype, as the official `type_as(x)`.
3. RMSNorm (q/k norms, t_embedding_norm): island math inside, output in the input dtype.
4. RoPE: q and k are rotated in the island dtype with an island-dtype table. The q/k RMSNorm and RoPE are
   one op (`ops.rmsnorm_rope`) that rounds once at the end; the official rounds the RMSNorm output to the
   input dtype before the rotation (the same in fp32).
5. LayerNorm + modulation: fp32 inside (`ops.adaln_layernorm`). The gated residual adds x + gate * y:
   fp32 inside, one rounding (`ops.gate_residual`); the official rounds the product and then the sum.
6. The final layer: entirely in the island dtype (LayerNorm, modulation and Linear); the output too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cosmos_engine import ops
from cosmos_engine.ops.reference import acc_dtype
from cosmos_engine.parallel import context_parallel

RMS_EPS = 1e-6
ROPE_BASE = 10000.0


# ----------------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig:
    """The official `MinimalV1LVGDiT` constructor arguments, with the official defaults.

    `DiTConfig(**official_kwargs)` describes the network the official constructor builds; an unknown name
    is a TypeError and a supported name with a value this engine does not implement is a ValueError.
    `flavors.dit_config("2b")` gives the complete 2B configuration. Accepted but without effect, as in
    the official RoPE path: `pos_emb_learnable`, `pos_emb_interpolation`, `min_fps`, `max_fps` and the
    `extra_*_extrapolation_ratio`s. `atten_backend` is accepted and ignored (every official backend is
    the same dense attention; ours is chosen by `ops.attention`). `sac_config` is accepted and not applied:
    activation checkpointing is `parallel.parallelize.apply_activation_checkpointing`.
    """

    max_img_h: int
    max_img_w: int
    max_frames: int
    in_channels: int
    out_channels: int
    patch_spatial: int
    patch_temporal: int
    concat_padding_mask: bool = True
    model_channels: int = 768
    num_blocks: int = 10
    num_heads: int = 16
    mlp_ratio: float = 4.0
    atten_backend: str = "transformer_engine"
    crossattn_emb_channels: int = 1024
    use_crossattn_projection: bool = False
    crossattn_proj_in_channels: int = 1024
    extra_image_context_dim: int | None = None
    pos_emb_cls: str = "sincos"
    pos_emb_learnable: bool = False
    pos_emb_interpolation: str = "crop"
    min_fps: int = 1
    max_fps: int = 30
    use_adaln_lora: bool = False
    adaln_lora_dim: int = 256
    rope_h_extrapolation_ratio: float = 1.0
    rope_w_extrapolation_ratio: float = 1.0
    rope_t_extrapolation_ratio: float = 1.0
    extra_per_block_abs_pos_emb: bool = False
    extra_h_extrapolation_ratio: float = 1.0
    extra_w_extrapolation_ratio: float = 1.0
    extra_t_extrapolation_ratio: float = 1.0
    rope_enable_fps_modulation: bool = True
    sac_config: Any = None
    n_dense_blocks: int = -1
    natten_parameters: Any = None
    use_wan_fp32_strategy: bool = False
    timestep_scale: float = 1.0

    def __post_init__(self) -> None:
        unsupported = {
            "pos_emb_cls": (self.pos_emb_cls, "rope3d"),
            "use_adaln_lora": (self.use_adaln_lora, True),
            "extra_per_block_abs_pos_emb": (self.extra_per_block_abs_pos_emb, False),
            "extra_image_context_dim": (self.extra_image_context_dim, None),
            "rope_enable_fps_modulation": (self.rope_enable_fps_modulation, False),
            "n_dense_blocks": (self.n_dense_blocks, -1),
            "natten_parameters": (self.natten_parameters, None),
            "use_wan_fp32_strategy": (self.use_wan_fp32_strategy, True),
        }
        for name, (value, implemented) in unsupported.items():
            if value != implemented:
                raise ValueError(f"DiTConfig: {name}={value!r} is not implemented; only {implemented!r} "
                                 "(the Video2World 2B configuration) is")
        positive = ("max_img_h", "max_img_w", "max_frames", "in_channels", "out_channels", "patch_spatial",
                    "patch_temporal", "model_channels", "num_blocks", "num_heads", "crossattn_emb_channels",
                    "crossattn_proj_in_channels", "adaln_lora_dim")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"DiTConfig: {name} must be positive, got {getattr(self, name)}")
        if self.model_channels % self.num_heads:
            raise ValueError(f"DiTConfig: model_channels={self.model_channels} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.head_dim % 2 or self.head_dim // 6 * 2 <= 2:
            raise ValueError(f"DiTConfig: head dim {self.head_dim} must be even and at least 12 for the 3D RoPE split")
        if int(self.model_channels * self.mlp_ratio) <= 0:
            raise ValueError(f"DiTConfig: mlp_ratio={self.mlp_ratio} gives an empty MLP")

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def patch_in_channels(self) -> int:
        """Channels the patch embedding sees: latent + condition mask (+ padding mask)."""
        return self.in_channels + 1 + int(self.concat_padding_mask)

    @property
    def text_in_channels(self) -> int:
        """Width of the raw text embedding `forward` takes (the projection's input when there is one)."""
        return self.crossattn_proj_in_channels if self.use_crossattn_projection else self.crossattn_emb_channels


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def linear_in(layer: nn.Linear, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`layer(x)` computed in `dtype` with the weights upcast: what the official fp32 autocast regions do.
    An enclosing autocast (the fp32-master training mode) is switched off here, so islands stay fp32."""
    bias = None if layer.bias is None else layer.bias.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.to(dtype), layer.weight.to(dtype), bias)


def adaln_modulation(layers: nn.Sequential, emb: torch.Tensor, adaln_lora: torch.Tensor) -> torch.Tensor:
    """Up(Down(SiLU(emb))) + adaln_lora in the island dtype of `emb`; `layers` is (SiLU, Down, Up)."""
    dtype = emb.dtype
    return linear_in(layers[2], linear_in(layers[1], F.silu(emb), dtype), dtype) + adaln_lora


def trunc_normal_(weight: torch.Tensor, std: float) -> None:
    """The official init: normal(0, std) truncated at 3 std, drawn in fp32 whatever the weight dtype."""
    draw = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
    nn.init.trunc_normal_(draw, std=std, a=-3 * std, b=3 * std)
    with torch.no_grad():
        weight.copy_(draw)


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------------


class Patchify(nn.Module):
    """[B, C, T*r, H*p, W*p] -> [B, T, H, W, C*r*p*p], channel-major: the feature of channel c, frame offset i,
    row offset m and column offset n is ((c*r + i)*p + m)*p + n (c*4 + m*2 + n for the 1x2x2 patch).

    Index 0 of `x_embedder.proj` (the official einops Rearrange), so the Linear keeps its key `proj.1`."""

    def __init__(self, patch_temporal: int, patch_spatial: int) -> None:
        super().__init__()
        self.patch_temporal = patch_temporal
        self.patch_spatial = patch_spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        r, p = self.patch_temporal, self.patch_spatial
        x = x.view(b, c, t // r, r, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t // r, h // p, w // p, c * r * p * p)


class PatchEmbed(nn.Module):
    """Patchify, then a bias-free Linear to the model width."""

    def __init__(self, in_channels: int, out_channels: int, patch_spatial: int, patch_temporal: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            Patchify(patch_temporal, patch_spatial),
            nn.Linear(in_channels * patch_spatial * patch_spatial * patch_temporal, out_channels, bias=False),
        )

    def forward(self, x_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
        return self.proj(x_B_C_T_H_W)  # [B, T, H, W, D]

    def init_weights(self) -> None:
        linear = self.proj[1]
        trunc_normal_(linear.weight, 1.0 / math.sqrt(linear.in_features))


class VideoRopePosition3DEmb(nn.Module):
    """The 3D RoPE angle table of the official `VideoRopePosition3DEmb` (fps modulation off).

    The head dim d splits into d_h = d_w = (d // 6) * 2 and d_t = d - 2 d_h. Exponents r = (0, 2, 4, ...)/d_x
    and the positions `seq` are buffers (see the module docstring for why that matters in bf16);
    frequency_x[j] = 1 / theta_x^r[j] with the NTK-scaled base theta_x = 10000 * ratio_x^(d_x / (d_x - 2)).
    """

    def __init__(self, head_dim: int, len_h: int, len_w: int, len_t: int,
                 h_extrapolation_ratio: float, w_extrapolation_ratio: float, t_extrapolation_ratio: float) -> None:
        super().__init__()
        self.max_h, self.max_w, self.max_t = len_h, len_w, len_t
        self.dim_h = head_dim // 6 * 2
        self.dim_t = head_dim - 2 * self.dim_h
        self.register_buffer("seq", torch.empty(max(len_h, len_w, len_t)))
        self.register_buffer("dim_spatial_range", torch.empty(self.dim_h // 2))
        self.register_buffer("dim_temporal_range", torch.empty(self.dim_t // 2))
        self.theta_h = ROPE_BASE * h_extrapolation_ratio ** (self.dim_h / (self.dim_h - 2))
        self.theta_w = ROPE_BASE * w_extrapolation_ratio ** (self.dim_h / (self.dim_h - 2))
        self.theta_t = ROPE_BASE * t_extrapolation_ratio ** (self.dim_t / (self.dim_t - 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fill the buffers in fp32, then store them in their own dtype (a bf16 net rounds them here)."""
        if self.seq.is_meta:
            return
        device = self.seq.device
        with torch.no_grad():
            self.seq.copy_(torch.arange(self.seq.numel(), dtype=torch.float32, device=device))
            self.dim_spatial_range.copy_(torch.arange(0, self.dim_h, 2, device=device).float() / self.dim_h)
            self.dim_temporal_range.copy_(torch.arange(0, self.dim_t, 2, device=device).float() / self.dim_t)

    def forward(self, t: int, h: int, w: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angle table, each [t*h*w, head_dim] in `dtype`, rows in (t, h, w) row-major order."""
        if t > self.max_t or h > self.max_h or w > self.max_w:
            raise ValueError(f"RoPE: a patch grid of (T={t}, H={h}, W={w}) exceeds the maximum "
                             f"(T={self.max_t}, H={self.max_h}, W={self.max_w}) set by max_frames/max_img_h/max_img_w")
        freqs_h = 1.0 / (self.theta_h ** self.dim_spatial_range.to(dtype))
        freqs_w = 1.0 / (self.theta_w ** self.dim_spatial_range.to(dtype))
        freqs_t = 1.0 / (self.theta_t ** self.dim_temporal_range.to(dtype))
        seq = self.seq.to(dtype)
        angles_t = torch.outer(seq[:t], freqs_t)[:, None, None, :].expand(t, h, w, -1)
        angles_h = torch.outer(seq[:h], freqs_h)[None, :, None, :].expand(t, h, w, -1)
        angles_w = torch.outer(seq[:w], freqs_w)[None, None, :, :].expand(t, h, w, -1)
        angles = torch.cat([angles_t, angles_h, angles_w] * 2, dim=-1).reshape(t * h * w, -1)
        return angles.cos(), angles.sin()


class Timesteps(nn.Module):
    """Sinusoidal timestep embedding [B, T] -> [B, T, D], cosines first, in the dtype of the timesteps."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps_B_T: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=timesteps_B_T.dtype, device=timesteps_B_T.device) / half
        angles = timesteps_B_T[..., None] * torch.exp(exponent)
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    """The AdaLN-LoRA term: Linear(D -> D) -> SiLU -> Linear(D -> 3D), bias-free, in the dtype of the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.linear_2 = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return linear_in(self.linear_2, F.silu(linear_in(self.linear_1, sample, sample.dtype)), sample.dtype)

    def init_weights(self) -> None:
        trunc_normal_(self.linear_1.weight, 1.0 / math.sqrt(self.linear_1.in_features))
        trunc_normal_(self.linear_2.weight, 1.0 / math.sqrt(self.linear_2.in_features))


class RMSNorm(nn.Module):
    """TransformerEngine's RMSNorm: x / sqrt(mean(x^2) + eps) * weight, island math, output in x's dtype."""

    def __init__(self, dim: int, eps: float = RMS_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = acc_dtype(x)
        xf = x.to(acc)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(acc)).to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


# ----------------------------------------------------------------------------------------------------------------------
# Attention, MLP, block, final layer
# ----------------------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention with per-head q/k RMSNorm; self-attention (context None) applies RoPE."""

    def __init__(self, query_dim: int, context_dim: int | None, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.is_selfattn = context_dim is None
        context_dim = query_dim if context_dim is None else context_dim
        inner_dim = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.q_proj = nn.Linear(query_dim, inner_dim, bias=False)
        self.q_norm = RMSNorm(head_dim)
        self.k_proj = nn.Linear(context_dim, inner_dim, bias=False)
        self.k_norm = RMSNorm(head_dim)
        self.v_proj = nn.Linear(context_dim, inner_dim, bias=False)
        self.output_proj = nn.Linear(inner_dim, query_dim, bias=False)
        self.context_parallel_group: dist.ProcessGroup | None = None  # self-attention only, see CosmosDiT

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        batch, tokens, _ = x.shape
        context = x if context is None else context
        # 1. Projections, split into heads                                  # [B, L, heads, d], [B, N, heads, d]
        q = self.q_proj(x).view(batch, tokens, self.num_heads, self.head_dim)
        k = self.k_proj(context).view(batch, context.shape[1], self.num_heads, self.head_dim)
        v = self.v_proj(context).view(batch, context.shape[1], self.num_heads, self.head_dim)
        # 2.+3. q/k RMSNorm over each head vector, then RoPE (self-attention only) with the island-dtype table
        cos, sin = rope if self.is_selfattn and rope is not None else (None, None)
        q = ops.rmsnorm_rope(q, self.q_norm.weight, cos, sin, self.q_norm.eps)
        k = ops.rmsnorm_rope(k, self.k_norm.weight, cos, sin, self.k_norm.eps)
        # 4. Attention, then the output projection                           # [B, L, D]
        group = self.context_parallel_group
        if group is None:
            out = ops.attention(q, k, v)
        else:  # this rank's tokens only: attend over every rank's tokens, for this rank's heads
            q, k, v = (context_parallel.tokens_to_heads(t, group) for t in (q, k, v))
            out = context_parallel.heads_to_tokens(ops.attention(q, k, v), group)
        return self.output_proj(out.reshape(batch, tokens, self.num_heads * self.head_dim))

    def init_weights(self) -> None:
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.output_proj):
            trunc_normal_(layer.weight, 1.0 / math.sqrt(layer.in_features))
        self.q_norm.reset_parameters()
        self.k_norm.reset_parameters()


class FeedForward(nn.Module):
    """Linear(D -> hidden) -> exact GELU -> Linear(hidden -> D), bias-free (official `GPT2FeedForward`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.layer2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(F.gelu(self.layer1(x)))

    def init_weights(self) -> None:
        trunc_normal_(self.layer1.weight, 1.0 / math.sqrt(self.layer1.in_features))
        trunc_normal_(self.layer2.weight, 1.0 / math.sqrt(self.layer2.in_features))


def adaln_lora_layers(dim: int, rank: int, chunks: int) -> nn.Sequential:
    """(SiLU, Linear(D -> rank), Linear(rank -> chunks*D)): keys `.1.weight` and `.2.weight` as official."""
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, rank, bias=False), nn.Linear(rank, chunks * dim, bias=False))


def init_adaln_lora(layers: nn.Sequential) -> None:
    """Official AdaLN-Zero init: the down projection truncated normal, the up projection zero."""
    trunc_normal_(layers[1].weight, 1.0 / math.sqrt(layers[1].in_features))
    nn.init.zeros_(layers[2].weight)


class Block(nn.Module):
    """Self-attention, cross-attention and MLP, each pre-normed with AdaLN (shift, scale) and gated."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, mlp_ratio: float, adaln_lora_dim: int) -> None:
        super().__init__()
        self.self_attn = Attention(dim, None, num_heads, dim // num_heads)
        self.cross_attn = Attention(dim, context_dim, num_heads, dim // num_heads)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))
        self.adaln_modulation_self_attn = adaln_lora_layers(dim, adaln_lora_dim, 3)
        self.adaln_modulation_cross_attn = adaln_lora_layers(dim, adaln_lora_dim, 3)
        self.adaln_modulation_mlp = adaln_lora_layers(dim, adaln_lora_dim, 3)

    def forward(self, x_B_L_D: torch.Tensor, emb_B_T_D: torch.Tensor, crossattn_emb: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], adaln_lora_B_T_3D: torch.Tensor) -> torch.Tensor:
        x = x_B_L_D
        # 1. Modulations in the island dtype, then cast to the residual dtype    # 3 x [B, T, D] each
        shift_sa, scale_sa, gate_sa = (adaln_modulation(self.adaln_modulation_self_attn, emb_B_T_D, adaln_lora_B_T_3D)
                                       .to(x.dtype).chunk(3, dim=-1))
        shift_ca, scale_ca, gate_ca = (adaln_modulation(self.adaln_modulation_cross_attn, emb_B_T_D, adaln_lora_B_T_3D)
                                       .to(x.dtype).chunk(3, dim=-1))
        shift_mlp, scale_mlp, gate_mlp = (adaln_modulation(self.adaln_modulation_mlp, emb_B_T_D, adaln_lora_B_T_3D)
                                          .to(x.dtype).chunk(3, dim=-1))
        # 2. Self-attention over all T*H*W tokens, with RoPE                     # [B, L, D]
        x = ops.gate_residual(x, gate_sa, self.self_attn(ops.adaln_layernorm(x, shift_sa, scale_sa), None, rope))
        # 3. Cross-attention to the text tokens
        x = ops.gate_residual(x, gate_ca, self.cross_attn(ops.adaln_layernorm(x, shift_ca, scale_ca), crossattn_emb))
        # 4. MLP
        return ops.gate_residual(x, gate_mlp, self.mlp(ops.adaln_layernorm(x, shift_mlp, scale_mlp)))

    def init_weights(self) -> None:
        self.self_attn.init_weights()
        self.cross_attn.init_weights()
        self.mlp.init_weights()
        for layers in (self.adaln_modulation_self_attn, self.adaln_modulation_cross_attn, self.adaln_modulation_mlp):
            init_adaln_lora(layers)


class FinalLayer(nn.Module):
    """LayerNorm + AdaLN (shift, scale), then Linear(D -> patch volume * out channels); all in the island dtype."""

    def __init__(self, dim: int, out_features: int, adaln_lora_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(dim, out_features, bias=False)
        self.adaln_modulation = adaln_lora_layers(dim, adaln_lora_dim, 2)

    def forward(self, x_B_L_D: torch.Tensor, emb_B_T_D: torch.Tensor, adaln_lora_B_T_3D: torch.Tensor) -> torch.Tensor:
        dtype = emb_B_T_D.dtype
        shift, scale = adaln_modulation(self.adaln_modulation, emb_B_T_D, adaln_lora_B_T_3D[..., : 2 * self.dim]).chunk(2, dim=-1)
        return linear_in(self.linear, ops.adaln_layernorm(x_B_L_D.to(dtype), shift, scale), dtype)  # [B, L, O]

    def init_weights(self) -> None:
        trunc_normal_(self.linear.weight, 1.0 / math.sqrt(self.dim))
        init_adaln_lora(self.adaln_modulation)


# ----------------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------------


class CosmosDiT(nn.Module):
    """The Video2World DiT. `forward` takes the official argument names and returns the velocity
    [B, out_channels, T, H, W] in the island dtype (fp32; fp64 for a float64 net).

    Build large nets on the meta device and load weights with `state_dict.load_dit`; `init_weights()`
    gives the official random initialisation (AdaLN-Zero: the blocks start as identities)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        # Bookkeeping buffers of the official trainer (`WeightTrainingStat`); never used in the math.
        self.register_buffer("accum_video_sample_counter", torch.zeros((), dtype=torch.int64))
        self.register_buffer("accum_image_sample_counter", torch.zeros((), dtype=torch.int64))
        self.register_buffer("accum_iteration", torch.zeros((), dtype=torch.int64))
        self.register_buffer("accum_train_in_hours", torch.zeros((), dtype=torch.float32))
        dim = cfg.model_channels
        self.x_embedder = PatchEmbed(cfg.patch_in_channels, dim, cfg.patch_spatial, cfg.patch_temporal)
        self.pos_embedder = VideoRopePosition3DEmb(
            cfg.head_dim, cfg.max_img_h // cfg.patch_spatial, cfg.max_img_w // cfg.patch_spatial,
            cfg.max_frames // cfg.patch_temporal, cfg.rope_h_extrapolation_ratio, cfg.rope_w_extrapolation_ratio,
            cfg.rope_t_extrapolation_ratio)
        self.t_embedder = nn.Sequential(Timesteps(dim), TimestepEmbedding(dim))
        self.blocks = nn.ModuleList(Block(dim, cfg.crossattn_emb_channels, cfg.num_heads, cfg.mlp_ratio, cfg.adaln_lora_dim)
                                    for _ in range(cfg.num_blocks))
        out_features = cfg.patch_spatial * cfg.patch_spatial * cfg.patch_temporal * cfg.out_channels
        self.final_layer = FinalLayer(dim, out_features, cfg.adaln_lora_dim)
        self.t_embedding_norm = RMSNorm(dim)
        if cfg.use_crossattn_projection:
            self.crossattn_proj = nn.Sequential(nn.Linear(cfg.crossattn_proj_in_channels, cfg.crossattn_emb_channels), nn.GELU())

    @property
    def dtype(self) -> torch.dtype:
        """The parameter dtype (the residual stream's dtype)."""
        return self.x_embedder.proj[1].weight.dtype

    def init_weights(self) -> None:
        """The official random initialisation, for every parameter and buffer (call after `to_empty`)."""
        for name in ("accum_video_sample_counter", "accum_image_sample_counter", "accum_iteration", "accum_train_in_hours"):
            getattr(self, name).zero_()
        self.x_embedder.init_weights()
        self.pos_embedder.reset_parameters()
        self.t_embedder[1].init_weights()
        for block in self.blocks:
            block.init_weights()
        self.final_layer.init_weights()
        self.t_embedding_norm.reset_parameters()
        if self.config.use_crossattn_projection:
            self.crossattn_proj[0].reset_parameters()

    @property
    def context_parallel_group(self) -> dist.ProcessGroup | None:
        return self.blocks[0].self_attn.context_parallel_group

    def enable_context_parallel(self, group: dist.ProcessGroup) -> None:
        """Split every forward's latent frames over the ranks of `group` (Ulysses, sampling only; see
        parallel/context_parallel.py). All ranks must call the net with the same inputs; each returns the
        whole output. The latent frame count and the head count must divide by the group size."""
        if self.config.num_heads % group.size():
            raise ValueError(f"context parallelism over {group.size()} ranks needs num_heads divisible by it, "
                             f"got {self.config.num_heads}")
        for block in self.blocks:
            block.self_attn.context_parallel_group = group

    def disable_context_parallel(self) -> None:
        for block in self.blocks:
            block.self_attn.context_parallel_group = None

    def forward(self, x_B_C_T_H_W: torch.Tensor, timesteps_B_T: torch.Tensor, crossattn_emb: torch.Tensor,
                condition_video_input_mask_B_C_T_H_W: torch.Tensor | None = None, fps: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, data_type: Any = "video", **kwargs: Any) -> torch.Tensor:
        """Velocity for the noisy latent `x_B_C_T_H_W`.

        Args (official names; extra keyword arguments are ignored, as the official forward does):
            x_B_C_T_H_W: [B, in_channels, T, H, W] latent (cast to the parameter dtype).
            timesteps_B_T: [B], [B, 1] or [B, T'] (T' latent frames / patch_temporal) on the 0..1000 scale.
            crossattn_emb: [B, N, crossattn_proj_in_channels] raw text embedding (before the projection).
            condition_video_input_mask_B_C_T_H_W: [B, 1, T, H, W], 1 on condition frames; None means zeros.
            fps: ignored by the math (RoPE fps modulation is off), as in the official network.
            padding_mask: [B, 1, H_px, W_px], resized to (H, W) by nearest neighbour; None means zeros.
            data_type: "video" or "image" (or the official DataType enum); images get an all-zero mask channel.
        """
        del fps, kwargs
        cfg = self.config
        dtype, island = self.dtype, acc_dtype(self.dtype)  # fp32 islands (fp64 nets stay exact)
        batch, _, frames, height, width = self._check_inputs(x_B_C_T_H_W, timesteps_B_T, crossattn_emb,
                                                             condition_video_input_mask_B_C_T_H_W, padding_mask)
        kind = getattr(data_type, "value", data_type)
        if kind not in ("video", "image"):
            raise ValueError(f"CosmosDiT: data_type must be 'video' or 'image', got {data_type!r}")

        # 1. Input channels: latent ++ condition mask ++ padding mask              # [B, C + 2, T, H, W]
        x = x_B_C_T_H_W.to(dtype)
        if kind == "video" and condition_video_input_mask_B_C_T_H_W is not None:
            condition_mask = condition_video_input_mask_B_C_T_H_W.to(dtype)
        else:
            condition_mask = x.new_zeros(batch, 1, frames, height, width)
        channels = [x, condition_mask]
        if cfg.concat_padding_mask:
            if padding_mask is None:
                mask = x.new_zeros(batch, 1, height, width)
            else:
                mask = F.interpolate(padding_mask, size=(height, width), mode="nearest").to(dtype)
            channels.append(mask[:, :, None].expand(batch, 1, frames, height, width))
        x = torch.cat(channels, dim=1)

        # 2. Patch embedding, tokens flattened in (t, h, w) row-major order       # [B, L, D]
        x_B_T_H_W_D = self.x_embedder(x)
        _, grid_t, grid_h, grid_w, dim = x_B_T_H_W_D.shape
        x = x_B_T_H_W_D.reshape(batch, grid_t * grid_h * grid_w, dim)

        # 3. RoPE table, in the island dtype                                    # cos, sin [L, head_dim]
        rope = self.pos_embedder(grid_t, grid_h, grid_w, island)
        group = self.context_parallel_group
        if group is not None:  # keep this rank's frames: their tokens and their rows of the table
            if torch.is_grad_enabled():
                raise RuntimeError("CosmosDiT: context parallelism is implemented for sampling only; call the net "
                                   "under torch.no_grad() or disable_context_parallel() to train")
            t0, t1 = context_parallel.frame_range(grid_t, group)
            per_frame = grid_h * grid_w
            x = x[:, t0 * per_frame:t1 * per_frame]
            rope = tuple(table[t0 * per_frame:t1 * per_frame] for table in rope)

        # 4. Text: Linear + exact GELU                                           # [B, N, crossattn_emb_channels]
        context = crossattn_emb.to(dtype)
        if cfg.use_crossattn_projection:
            context = self.crossattn_proj(context)

        # 5. Time, in the island dtype: emb = RMSNorm(sinusoid), LoRA term = MLP(sinusoid)
        timesteps = timesteps_B_T.to(island)
        timesteps = timesteps[:, None] if timesteps.dim() == 1 else timesteps     # [B, 1] or [B, T]
        sinusoid = self.t_embedder[0](timesteps * cfg.timestep_scale)            # [B, T, D]
        adaln_lora_B_T_3D = self.t_embedder[1](sinusoid)                         # [B, T, 3D]
        emb_B_T_D = self.t_embedding_norm(sinusoid)                              # [B, T, D]
        if group is not None and emb_B_T_D.shape[1] > 1:  # per-frame timesteps: this rank's frames
            emb_B_T_D, adaln_lora_B_T_3D = emb_B_T_D[:, t0:t1], adaln_lora_B_T_3D[:, t0:t1]

        # 6. Blocks                                                              # [B, L, D]
        for block in self.blocks:
            x = block(x, emb_B_T_D, context, rope, adaln_lora_B_T_3D)

        # 7. Final layer                                                         # [B, L, p*p*r*C_out], island dtype
        x = self.final_layer(x, emb_B_T_D, adaln_lora_B_T_3D)
        if group is not None:
            x = context_parallel.gather_tokens(x, group)

        # 8. Unpatchify "B T H W (p1 p2 r C) -> B C (T r) (H p1) (W p2)": the feature order here is channel-MINOR,
        #    the opposite of patchify, because that is how the official final layer was trained.
        p, r, c_out = cfg.patch_spatial, cfg.patch_temporal, cfg.out_channels
        x = x.view(batch, grid_t, grid_h, grid_w, p, p, r, c_out)
        return x.permute(0, 7, 1, 6, 2, 4, 3, 5).reshape(batch, c_out, grid_t * r, grid_h * p, grid_w * p)

    def _check_inputs(self, x: torch.Tensor, timesteps: torch.Tensor, crossattn_emb: torch.Tensor,
                      condition_mask: torch.Tensor | None, padding_mask: torch.Tensor | None) -> tuple[int, ...]:
        """Raise ValueError, naming the argument and its shape, unless the inputs fit this net."""
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"CosmosDiT: x_B_C_T_H_W must be [B, {cfg.in_channels}, T, H, W], got {tuple(x.shape)} {x.dtype}")
        if not x.is_floating_point():
            raise ValueError(f"CosmosDiT: x_B_C_T_H_W must be a floating-point tensor, got {x.dtype}")
        batch, _, frames, height, width = x.shape
        if frames % cfg.patch_temporal or height % cfg.patch_spatial or width % cfg.patch_spatial:
            raise ValueError(f"CosmosDiT: x_B_C_T_H_W {tuple(x.shape)}: T must be a multiple of {cfg.patch_temporal} "
                             f"and H, W multiples of {cfg.patch_spatial}")
        grid_t = frames // cfg.patch_temporal
        if not (timesteps.dim() == 1 and timesteps.shape[0] == batch
                or timesteps.dim() == 2 and timesteps.shape[0] == batch and timesteps.shape[1] in (1, grid_t)):
            raise ValueError(f"CosmosDiT: timesteps_B_T must be [B={batch}], [B, 1] or [B, T={grid_t}], "
                             f"got {tuple(timesteps.shape)} {timesteps.dtype}")
        if crossattn_emb.dim() != 3 or crossattn_emb.shape[0] != batch or crossattn_emb.shape[2] != cfg.text_in_channels:
            raise ValueError(f"CosmosDiT: crossattn_emb must be [B={batch}, N, {cfg.text_in_channels}], "
                             f"got {tuple(crossattn_emb.shape)} {crossattn_emb.dtype}")
        if condition_mask is not None and tuple(condition_mask.shape) != (batch, 1, frames, height, width):
            raise ValueError(f"CosmosDiT: condition_video_input_mask_B_C_T_H_W must be {(batch, 1, frames, height, width)}, "
                             f"got {tuple(condition_mask.shape)} {condition_mask.dtype}")
        if padding_mask is not None and (padding_mask.dim() != 4 or padding_mask.shape[:2] != (batch, 1)
                                         or not padding_mask.is_floating_point()):
            raise ValueError(f"CosmosDiT: padding_mask must be a floating-point [B={batch}, 1, H_px, W_px], "
                             f"got {tuple(padding_mask.shape)} {padding_mask.dtype}")
        return batch, cfg.in_channels, frames, height, width
