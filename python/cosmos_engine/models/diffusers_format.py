"""The diffusers format of the DiT: diffusers' `CosmosTransformer3DModel` folders, both ways.

One rename table (official key <-> diffusers key) serves weights and LoRA adapters alike: a key is matched
by its module path and whatever follows that path (`weight`, `lora_A.weight`, `base_layer.weight`, ...) is
kept, so `blocks.3.self_attn.q_proj.lora_B.weight` <-> `transformer_blocks.3.attn1.to_q.lora_B.weight`.
diffusers drops seven buffers (the four `accum_*` training counters and the three `pos_embedder.*` RoPE
exponent tables); reading a folder rebuilds them (`rebuilt_buffers`): the counters restart at zero.

A transformer folder is what `CosmosTransformer3DModel.save_pretrained` writes: `config.json` and
`diffusion_pytorch_model.safetensors`, or shards `diffusion_pytorch_model-0000i-of-0000n.safetensors` with
`diffusion_pytorch_model.safetensors.index.json` (key -> shard). `config.json` holds diffusers' constructor
arguments; `diffusers_config` derives them from a `DiTConfig`, and `check_config` compares a folder's values
with the DiTConfig the caller builds (a mismatch is one error naming the key and both values).

Facts from diffusers 0.42.1 (`models/transformers/transformer_cosmos.py` and the 2.5 entries of
`scripts/convert_cosmos_to_diffusers.py`): its `in_channels` counts the condition-mask channel (17 for our
16), `rope_scale` is ordered (t, h, w), `max_size` (frames, height, width), and the Predict2.5 networks have
no learnable absolute position embedding (`extra_pos_embed_type` None). Its forward takes the timestep on
the 0..1 scale (ours x `timestep_scale` 0.001) and the condition and padding masks as separate arguments
(`diffusers_inputs`). Its q/k RMSNorms use eps 1e-5 (diffusers' `Attention` default) where the official
network uses 1e-6: on the tiny flavor in fp32 the outputs differ by about 2e-6 relative, mostly from that.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from cosmos_engine.atomic import atomic_path, atomic_write
from cosmos_engine.errors import CheckpointError
from cosmos_engine.models.cosmos_dit import CosmosDiT, DiTConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = WEIGHTS_FILE + ".index.json"
CLASS_NAME = "CosmosTransformer3DModel"
DIFFUSERS_VERSION = "0.42.1"  # the version whose class and constructor this module follows
MAX_SHARD_BYTES = 10 * 10**9  # diffusers' save_pretrained default ("10GB")

# ----------------------------------------------------------------------------------------------------------------------
# The rename table: (official module path, diffusers module path)
# ----------------------------------------------------------------------------------------------------------------------

BLOCKS = ("blocks", "transformer_blocks")
BLOCK_MODULES = (  # under blocks.N / transformer_blocks.N
    ("self_attn.q_proj", "attn1.to_q"),
    ("self_attn.k_proj", "attn1.to_k"),
    ("self_attn.v_proj", "attn1.to_v"),
    ("self_attn.output_proj", "attn1.to_out.0"),
    ("self_attn.q_norm", "attn1.norm_q"),
    ("self_attn.k_norm", "attn1.norm_k"),
    ("cross_attn.q_proj", "attn2.to_q"),
    ("cross_attn.k_proj", "attn2.to_k"),
    ("cross_attn.v_proj", "attn2.to_v"),
    ("cross_attn.output_proj", "attn2.to_out.0"),
    ("cross_attn.q_norm", "attn2.norm_q"),
    ("cross_attn.k_norm", "attn2.norm_k"),
    ("mlp.layer1", "ff.net.0.proj"),
    ("mlp.layer2", "ff.net.2"),
    ("adaln_modulation_self_attn.1", "norm1.linear_1"),
    ("adaln_modulation_self_attn.2", "norm1.linear_2"),
    ("adaln_modulation_cross_attn.1", "norm2.linear_1"),
    ("adaln_modulation_cross_attn.2", "norm2.linear_2"),
    ("adaln_modulation_mlp.1", "norm3.linear_1"),
    ("adaln_modulation_mlp.2", "norm3.linear_2"),
)
TOP_MODULES = (
    ("x_embedder.proj.1", "patch_embed.proj"),
    ("t_embedder.1", "time_embed.t_embedder"),
    ("t_embedding_norm", "time_embed.norm"),
    ("final_layer.linear", "proj_out"),
    ("final_layer.adaln_modulation.1", "norm_out.linear_1"),
    ("final_layer.adaln_modulation.2", "norm_out.linear_2"),
    ("crossattn_proj.0", "crossattn_proj.0"),
)
# Official entries diffusers has no place for; `rebuilt_buffers` recomputes them.
DROPPED = ("accum_video_sample_counter", "accum_image_sample_counter", "accum_iteration", "accum_train_in_hours",
           "pos_embedder")
_NAMES = ("official", "diffusers")


def _under(key: str, path: str) -> bool:
    return key == path or key.startswith(path + ".")


def _rename(key: str, src: int) -> str:
    """`key` in the other naming (src 0: official -> diffusers, 1: diffusers -> official)."""
    dst = 1 - src
    block = re.match(rf"{BLOCKS[src]}\.(\d+)\.(.+)$", key)
    head, rest, table = (f"{BLOCKS[dst]}.{block[1]}.", block[2], BLOCK_MODULES) if block else ("", key, TOP_MODULES)
    for pair in table:
        if _under(rest, pair[src]):
            return head + pair[dst] + rest[len(pair[src]):]
    raise CheckpointError(f"unknown {_NAMES[src]} DiT key {key!r}: the {_NAMES[src]} <-> {_NAMES[dst]} table "
                          "has no module it belongs to")


def diffusers_module_roots() -> list[str]:
    """The first names of diffusers module paths that no official key starts with (`transformer_blocks`,
    `patch_embed`, ...): what tells a diffusers-named key from an official one."""
    official = {BLOCKS[0]} | {path.split(".")[0] for path, _ in TOP_MODULES}
    return sorted(({BLOCKS[1]} | {path.split(".")[0] for _, path in TOP_MODULES}) - official)


def is_dropped(official_key: str) -> bool:
    """Whether diffusers has no entry for this official key (a buffer `rebuilt_buffers` recomputes)."""
    return any(_under(official_key, path) for path in DROPPED)


def diffusers_key(official_key: str) -> str | None:
    """The diffusers name of an official key (any suffix after its module path kept); None for the buffers
    diffusers drops. CheckpointError naming the key when it belongs to no module of the DiT."""
    return None if is_dropped(official_key) else _rename(official_key, 0)


def official_key(diffusers_key: str) -> str:
    """The official name of a diffusers key (any suffix after its module path kept); CheckpointError naming
    the key when it belongs to no module of the DiT."""
    return _rename(diffusers_key, 1)


def to_diffusers(state: Mapping[str, Any]) -> dict[str, Any]:
    """An official-keyed state dict (weights or a LoRA adapter) in diffusers names, dropped buffers left out."""
    return {name: value for key, value in state.items() if (name := diffusers_key(key)) is not None}


def from_diffusers(state: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers-keyed state dict (weights or a LoRA adapter) in official names."""
    return {official_key(key): value for key, value in state.items()}


def rebuilt_buffers(model: CosmosDiT, device: str | torch.device) -> dict[str, torch.Tensor]:
    """The official entries diffusers drops, for `model` (possibly on the meta device), on `device`: the
    RoPE exponent buffers as the model computes them (in its dtype) and the `accum_*` counters at zero."""
    rope = copy.deepcopy(model.pos_embedder).to_empty(device=device)
    rope.reset_parameters()
    buffers = {f"pos_embedder.{name}": value for name, value in rope.state_dict().items()}
    buffers.update({name: torch.zeros_like(value, device=device) for name, value in model.named_buffers()
                    if name.startswith("accum_")})
    return buffers


# ----------------------------------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------------------------------

# diffusers' constructor defaults (what it assumes for a key the file lacks).
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "in_channels": 16, "out_channels": 16, "num_attention_heads": 32, "attention_head_dim": 128, "num_layers": 28,
    "mlp_ratio": 4.0, "text_embed_dim": 1024, "adaln_lora_dim": 256, "max_size": [128, 240, 240],
    "patch_size": [1, 2, 2], "rope_scale": [2.0, 1.0, 1.0], "concat_padding_mask": True,
    "extra_pos_embed_type": "learnable", "use_crossattn_projection": False, "crossattn_proj_in_channels": 1024,
    "encoder_hidden_states_channels": 1024, "controlnet_block_every_n": None, "img_context_dim_in": None,
    "img_context_num_tokens": 256, "img_context_dim_out": 2048,
}
_UNUSED = ("img_context_num_tokens", "img_context_dim_out")  # read by diffusers only when img_context_dim_in is set


def diffusers_config(config: DiTConfig) -> dict[str, Any]:
    """diffusers' constructor arguments for the network `config` describes."""
    return {
        **DIFFUSERS_DEFAULTS,
        "in_channels": config.in_channels + 1,  # diffusers counts the condition-mask channel
        "out_channels": config.out_channels,
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "num_layers": config.num_blocks,
        "mlp_ratio": config.mlp_ratio,
        "text_embed_dim": config.crossattn_emb_channels,
        "adaln_lora_dim": config.adaln_lora_dim,
        "max_size": [config.max_frames, config.max_img_h, config.max_img_w],
        "patch_size": [config.patch_temporal, config.patch_spatial, config.patch_spatial],
        "rope_scale": [config.rope_t_extrapolation_ratio, config.rope_h_extrapolation_ratio,
                       config.rope_w_extrapolation_ratio],
        "concat_padding_mask": config.concat_padding_mask,
        "extra_pos_embed_type": None,
        "use_crossattn_projection": config.use_crossattn_projection,
        "crossattn_proj_in_channels": config.crossattn_proj_in_channels,
        "encoder_hidden_states_channels": config.crossattn_emb_channels,
    }


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a diffusers transformer folder holds {CONFIG_FILE} beside its weights")
    try:
        found = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not JSON ({exc})") from None
    if not isinstance(found, dict):
        raise CheckpointError(f"{path}: expected a JSON object of constructor arguments, found {type(found).__name__}")
    return found


def check_config(found: Mapping[str, Any], config: DiTConfig, source: str | Path) -> None:
    """CheckpointError naming the first key of a diffusers `config.json` whose value (or diffusers' default,
    where the file lacks the key) differs from what `config` needs, with both values."""
    class_name = found.get("_class_name", CLASS_NAME)
    if class_name != CLASS_NAME:
        raise CheckpointError(f"{source}: _class_name is {class_name!r}; expected {CLASS_NAME!r}")
    unknown = [key for key in found if not key.startswith("_") and key not in DIFFUSERS_DEFAULTS]
    if unknown:
        raise CheckpointError(f"{source}: unknown key {unknown[0]!r} (not a {CLASS_NAME} argument of diffusers "
                              f"{DIFFUSERS_VERSION})")
    for key, want in diffusers_config(config).items():
        got = found.get(key, DIFFUSERS_DEFAULTS[key])
        if key not in _UNUSED and _json(got) != _json(want):
            raise CheckpointError(f"{source}: {key} is {_json(got)}, the DiT configuration needs {_json(want)}")


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # JSON has lists where diffusers has tuples


# ----------------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------------


def diffusers_folder(path: str | Path) -> Path | None:
    """The diffusers transformer folder at `path` or at `path/transformer` (a pipeline folder), or None when
    neither holds a `config.json` or diffusers weights."""
    path = Path(path)
    for folder in (path, path / "transformer"):
        if any((folder / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE)):
            return folder
    return None


def weight_files(folder: Path) -> dict[Path, list[str] | None]:
    """The folder's safetensors files, each with the keys the index assigns it (None: one unsharded file)."""
    index = folder / INDEX_FILE
    if not index.is_file():
        if not (folder / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{folder}: neither {WEIGHTS_FILE} nor {INDEX_FILE} (sharded weights) is there")
        return {folder / WEIGHTS_FILE: None}
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a safetensors index (a JSON object with a 'weight_map'; {exc!r})") from None
    files: dict[Path, list[str]] = {}
    for key, name in weight_map.items():
        files.setdefault(folder / name, []).append(key)
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"{index}: names the shard {path.name}, which is missing")
    return files


def _open(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(path, framework="pt", device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _shard_keys(path: Path, listed: list[str] | None, handle) -> list[str]:
    keys = list(handle.keys())
    if listed is not None and set(listed) != set(keys):
        odd = min(set(listed) ^ set(keys))
        where = "lists" if odd in listed else "lacks"
        raise CheckpointError(f"{path}: the index {where} the key {odd!r} for this shard, the shard disagrees")
    return keys


def tensor_shapes(folder: Path) -> dict[str, torch.Size]:
    """Official key -> shape of every tensor in the folder's weights, from the safetensors headers only."""
    shapes = {}
    for path, listed in weight_files(folder).items():
        with _open(path) as handle:
            for key in _shard_keys(path, listed, handle):
                shapes[_official(key, path)] = torch.Size(handle.get_slice(key).get_shape())
    return shapes


def iter_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(official key, tensor) for every tensor of the folder's weights, read one at a time."""
    for path, listed in weight_files(folder).items():
        with _open(path) as handle:
            for key in _shard_keys(path, listed, handle):
                yield _official(key, path), handle.get_tensor(key)


def _official(key: str, path: Path) -> str:
    try:
        return official_key(key)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------------


def save_diffusers(state: Mapping[str, torch.Tensor], config: DiTConfig, folder: str | Path, *,
                   max_shard_bytes: int = MAX_SHARD_BYTES) -> list[Path]:
    """Write an official-keyed DiT state dict as a diffusers transformer folder; returns the files written.

    Shards of at most `max_shard_bytes` (a larger single tensor gets its own shard) with the index when
    the weights exceed it; every file is written atomically, `config.json` last, and weight files an
    earlier export left in `folder` that this one does not name are removed."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = to_diffusers(state)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.contiguous()
        size += nbytes
    names = [WEIGHTS_FILE] if len(shards) == 1 else [
        f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    written = []
    if len(shards) == 1:  # a reader prefers an index: a stale one must not outlive a crash of this export
        (folder / INDEX_FILE).unlink(missing_ok=True)
    for name, shard in zip(names, shards):
        with atomic_path(folder / name) as tmp:
            save_file(shard, str(tmp), metadata={"format": "pt"})
        written.append(folder / name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {key: name for name, shard in zip(names, shards) for key in shard}}
        atomic_write(folder / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.append(folder / INDEX_FILE)
    config_json = {"_class_name": CLASS_NAME, "_diffusers_version": DIFFUSERS_VERSION, **diffusers_config(config)}
    atomic_write(folder / CONFIG_FILE, json.dumps(config_json, indent=2) + "\n")
    written.append(folder / CONFIG_FILE)
    for stale in folder.glob("diffusion_pytorch_model*.safetensors*"):
        if stale not in written:
            stale.unlink()
    return written


# ----------------------------------------------------------------------------------------------------------------------
# diffusers' class as a peer (tests and benchmarks; needs the optional `diffusers` package)
# ----------------------------------------------------------------------------------------------------------------------


def diffusers_transformer_class() -> type:
    """diffusers' `CosmosTransformer3DModel` (ImportError when diffusers, or the torchvision its forward
    uses, is not installed: both are in the `[test]` extra)."""
    import torchvision  # noqa: F401 - diffusers' Cosmos forward resizes the padding mask with it

    from diffusers.models.transformers import transformer_cosmos

    return transformer_cosmos.CosmosTransformer3DModel


def diffusers_transformer(config: DiTConfig, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """diffusers' `CosmosTransformer3DModel` for `config` holding these official-keyed weights (assigned,
    not copied: it shares them with `state`)."""
    with torch.device("meta"):
        model = diffusers_transformer_class()(**diffusers_config(config))
    model.load_state_dict(to_diffusers(state), assign=True)
    return model


def diffusers_inputs(config: DiTConfig, x_B_C_T_H_W: torch.Tensor, timesteps_B_T: torch.Tensor,
                     crossattn_emb: torch.Tensor, condition_video_input_mask_B_C_T_H_W: torch.Tensor,
                     padding_mask: torch.Tensor) -> dict[str, Any]:
    """The keyword arguments of diffusers' forward for the same computation as `CosmosDiT.forward` with
    these inputs: the timestep on its 0..1 scale ([B], or [B, 1, T, 1, 1] per frame), the masks as
    separate arguments (the padding mask of the first sample: diffusers repeats it over the batch), no fps."""
    timestep = timesteps_B_T.float() * config.timestep_scale
    if timestep.dim() == 2:
        timestep = timestep[:, 0] if timestep.shape[1] == 1 else timestep[:, None, :, None, None]
    return {"hidden_states": x_B_C_T_H_W, "timestep": timestep, "encoder_hidden_states": crossattn_emb,
            "condition_mask": condition_video_input_mask_B_C_T_H_W, "padding_mask": padding_mask[:1],
            "return_dict": False}
