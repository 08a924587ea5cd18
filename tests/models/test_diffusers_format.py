"""The diffusers format: the rename table, transformer folders written and read (sharded too), the config
check, and diffusers' own `CosmosTransformer3DModel` run on an exported folder against our DiT."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cosmos_engine import convert
from cosmos_engine.cli import main
from cosmos_engine.errors import CheckpointError
from cosmos_engine.models import diffusers_format as dfmt
from cosmos_engine.models.cosmos_dit import CosmosDiT
from cosmos_engine.models.flavors import dit_config
from cosmos_engine.models.state_dict import build_dit

TINY = dit_config("tiny")


@pytest.fixture(scope="module")
def net() -> CosmosDiT:
    """The tiny DiT with every weight random (the official init zeroes the AdaLN up projections, which would
    leave most of the network out of the comparison)."""
    torch.manual_seed(0)
    model = build_dit(TINY)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 1 / math.sqrt(p.shape[-1]))
    return model.eval()


def assert_same_state(model: CosmosDiT, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def test_rename_table_is_one_to_one_over_the_2b_keys():
    with torch.device("meta"):
        keys = list(CosmosDiT(dit_config("2b")).state_dict())
    kept = [k for k in keys if dfmt.diffusers_key(k) is not None]
    assert len(keys) - len(kept) == 7  # the four accum_* counters and the three RoPE buffers
    names = [dfmt.diffusers_key(k) for k in kept]
    assert len(set(names)) == len(names)
    assert [dfmt.official_key(n) for n in names] == kept
    assert dfmt.diffusers_key("blocks.27.cross_attn.output_proj.weight") == "transformer_blocks.27.attn2.to_out.0.weight"
    assert dfmt.diffusers_key("x_embedder.proj.1.weight") == "patch_embed.proj.weight"
    assert dfmt.official_key("norm_out.linear_2.weight") == "final_layer.adaln_modulation.2.weight"


def test_adapter_keys_keep_their_suffix():
    assert dfmt.diffusers_key("blocks.3.self_attn.q_proj.lora_A.weight") == "transformer_blocks.3.attn1.to_q.lora_A.weight"
    assert dfmt.official_key("transformer_blocks.0.ff.net.2.lora_B.default.weight") == "blocks.0.mlp.layer2.lora_B.default.weight"
    assert dfmt.official_key("transformer_blocks.1.norm3.linear_1") == "blocks.1.adaln_modulation_mlp.1"
    adapter = {"blocks.0.mlp.layer1.lora_A.weight": torch.ones(2, 3)}
    assert dfmt.from_diffusers(dfmt.to_diffusers(adapter)) == adapter


@pytest.mark.parametrize(("rename", "key"), [(dfmt.diffusers_key, "blocks.0.self_attn.gate.weight"),
                                              (dfmt.official_key, "transformer_blocks.0.attn1.add_q_proj.weight"),
                                              (dfmt.official_key, "learnable_pos_embed.pos_emb_t")])
def test_unknown_key_is_one_clear_error(rename, key):
    with pytest.raises(CheckpointError, match=f"unknown .* DiT key '{key}'"):
        rename(key)


@pytest.mark.parametrize("max_shard_bytes", [dfmt.MAX_SHARD_BYTES, 300_000])
def test_round_trip_is_bitwise(tmp_path, net, max_shard_bytes):
    state = net.state_dict()
    written = dfmt.save_diffusers(state, TINY, tmp_path, max_shard_bytes=max_shard_bytes)
    shards = [p for p in written if p.suffix == ".safetensors"]
    assert (len(shards) > 1) == (max_shard_bytes < dfmt.MAX_SHARD_BYTES)
    assert (tmp_path / dfmt.INDEX_FILE).is_file() == (len(shards) > 1)
    read = dict(dfmt.iter_tensors(tmp_path))
    kept = {k: v for k, v in state.items() if not dfmt.is_dropped(k)}
    assert sorted(read) == sorted(kept) and all(torch.equal(read[k], v) and read[k].dtype == v.dtype for k, v in kept.items())
    assert_same_state(build_dit(TINY, tmp_path), state)  # the dropped buffers are rebuilt exactly
    assert_same_state(build_dit(TINY, tmp_path.parent / tmp_path.name), state)


def test_reexport_with_other_sharding_leaves_no_stale_files(tmp_path, net):
    dfmt.save_diffusers(net.state_dict(), TINY, tmp_path, max_shard_bytes=300_000)
    dfmt.save_diffusers(net.state_dict(), TINY, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [dfmt.CONFIG_FILE, dfmt.WEIGHTS_FILE]
    assert_same_state(build_dit(TINY, tmp_path), net.state_dict())


def test_bf16_load_rounds_like_a_bf16_official_file(tmp_path, net):
    dfmt.save_diffusers(net.state_dict(), TINY, tmp_path / "transformer")
    model = build_dit(TINY, tmp_path, dtype=torch.bfloat16)  # a pipeline folder: its transformer/ is read
    want = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    bf16 = build_dit(TINY, dtype=torch.bfloat16).state_dict()
    want.update({k: bf16[k] for k in want if k.startswith("pos_embedder.")})  # rounded as net.to(bfloat16) does
    assert_same_state(model, want)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("rope_scale", [2.0, 1.0, 1.0], r"rope_scale is \[2.0, 1.0, 1.0\], the DiT configuration needs \[1.0, 3.0, 3.0\]"),
    ("max_size", [93, 240, 240], r"max_size is \[93, 240, 240\], the DiT configuration needs \[128, 240, 240\]"),
    ("mlp_ratio", 4.0, "mlp_ratio is 4.0, the DiT configuration needs 2.0"),
    ("extra_pos_embed_type", "learnable", "extra_pos_embed_type is learnable, the DiT configuration needs None"),
    ("in_channels", 16, "in_channels is 16, the DiT configuration needs 17"),
    ("fancy_option", 1, "unknown key 'fancy_option'"),
    ("_class_name", "WanTransformer3DModel", "_class_name is 'WanTransformer3DModel'"),
])
def test_config_mismatch_names_the_key_and_both_values(tmp_path, net, key, value, message):
    dfmt.save_diffusers(net.state_dict(), TINY, tmp_path)
    config = json.loads((tmp_path / dfmt.CONFIG_FILE).read_text())
    (tmp_path / dfmt.CONFIG_FILE).write_text(json.dumps({**config, key: value}))
    with pytest.raises(CheckpointError, match=f"config.json: {message}"):
        build_dit(TINY, tmp_path)


def test_the_2b_flavor_is_diffusers_cosmos_2_5_predict_2b():
    """diffusers' converter configuration 'Cosmos-2.5-Predict-Base-2B' (scripts/convert_cosmos_to_diffusers.py)."""
    published = {"in_channels": 17, "out_channels": 16, "num_attention_heads": 16, "attention_head_dim": 128,
                 "num_layers": 28, "mlp_ratio": 4.0, "text_embed_dim": 1024, "adaln_lora_dim": 256,
                 "max_size": [128, 240, 240], "patch_size": [1, 2, 2], "rope_scale": [1.0, 3.0, 3.0],
                 "concat_padding_mask": True, "extra_pos_embed_type": None, "use_crossattn_projection": True,
                 "crossattn_proj_in_channels": 100352, "encoder_hidden_states_channels": 1024}
    dfmt.check_config(published, dit_config("2b"), "config.json")
    with pytest.raises(CheckpointError, match="num_attention_heads is 16, the DiT configuration needs 2"):
        dfmt.check_config(published, TINY, "config.json")


def test_missing_config_key_takes_the_diffusers_default(tmp_path, net):
    dfmt.save_diffusers(net.state_dict(), TINY, tmp_path)
    config = json.loads((tmp_path / dfmt.CONFIG_FILE).read_text())
    del config["use_crossattn_projection"]  # diffusers' default is False; the DiT projects its text input
    (tmp_path / dfmt.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="use_crossattn_projection is False, the DiT configuration needs True"):
        build_dit(TINY, tmp_path)


def test_missing_files_and_wrong_weights_are_clear_errors(tmp_path, net):
    folder = tmp_path / "t"
    written = dfmt.save_diffusers(net.state_dict(), TINY, folder, max_shard_bytes=300_000)
    written[1].unlink()
    with pytest.raises(CheckpointError, match=f"names the shard {written[1].name}, which is missing"):
        build_dit(TINY, folder)
    (folder / dfmt.INDEX_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"neither {dfmt.WEIGHTS_FILE} nor"):
        build_dit(TINY, folder)

    dfmt.save_diffusers(net.state_dict(), TINY, folder)
    (folder / dfmt.CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        build_dit(TINY, folder)

    dfmt.save_diffusers(net.state_dict(), dit_config("2b"), folder)  # a tiny net's weights, a 2B config
    with pytest.raises(CheckpointError, match="num_attention_heads is 16, the DiT configuration needs 2"):
        build_dit(TINY, folder)
    dfmt.save_diffusers({}, TINY, tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not fit the DiT.*missing: x_embedder.proj.1.weight"):
        build_dit(TINY, tmp_path / "empty")
    (tmp_path / "empty" / dfmt.WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        build_dit(TINY, tmp_path / "empty")


def test_convert_to_diffusers_from_a_dcp_checkpoint(tmp_path, net):
    from cosmos_engine.train.checkpoint import CheckpointManager

    ema = build_dit(TINY)
    parts = {"model": {**{f"net.{k}": v.to(torch.bfloat16) if v.is_floating_point() else v
                          for k, v in net.state_dict().items()},
                       **{f"net_ema.{k}": v for k, v in ema.state_dict().items()}},
             "optim": {}, "scheduler": {"last_epoch": 1}, "trainer": {"iteration": 1}}
    folder = CheckpointManager(tmp_path / "checkpoints", keep_last=1).save(1, parts)
    assert main(["convert", str(folder), "--to", "diffusers"]) == 0
    assert_same_state(build_dit(TINY, folder / "transformer"), ema.state_dict())
    assert main(["convert", str(folder), str(tmp_path / "net"), "--to", "diffusers", "--no-ema", "--dtype", "bfloat16"]) == 0
    got = build_dit(TINY, tmp_path / "net", dtype=torch.bfloat16).state_dict()
    assert all(torch.equal(got[k.removeprefix("net.")], v) for k, v in parts["model"].items() if k.startswith("net.blocks"))

    torch.save({"net.x_embedder.proj.1.weight": torch.zeros(3, 3)}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="fit no DiT flavor; as '2b', .*; as 'tiny', "):
        convert.convert_to_diffusers(tmp_path / "odd.pt")


# ------------------------------------------------------------------------------------------- diffusers itself


def test_diffusers_transformer_from_our_folder_gives_our_output(tmp_path, net):
    """diffusers loads the folder itself (from_pretrained); our inputs reach it through `diffusers_inputs`."""
    pytest.importorskip("torchvision", reason="torchvision is not installed (pip install -e .[test]); the parity with "
                                              "diffusers' CosmosTransformer3DModel is not checked")
    pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e .[test]); the parity with "
                                            "its CosmosTransformer3DModel is not checked")
    dfmt.save_diffusers(net.state_dict(), TINY, tmp_path)
    theirs = dfmt.diffusers_transformer_class().from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    assert sorted(theirs.state_dict()) == sorted(dfmt.to_diffusers(net.state_dict()))
    gen = torch.Generator().manual_seed(1)
    batch, frames, height, width = 2, 3, 8, 12
    x = torch.randn(batch, TINY.in_channels, frames, height, width, generator=gen)
    condition = torch.zeros(batch, 1, frames, height, width)
    condition[:, :, :1] = 1
    padding = (torch.rand(1, 1, 8 * height, 8 * width, generator=gen) > 0.5).float().expand(batch, -1, -1, -1)
    text = torch.randn(batch, 7, TINY.crossattn_proj_in_channels, generator=gen)
    with torch.no_grad():
        for timesteps in (torch.tensor([300.0, 900.0]), 1000 * torch.rand(batch, frames, generator=gen)):
            inputs = {"x_B_C_T_H_W": x, "timesteps_B_T": timesteps, "crossattn_emb": text,
                      "condition_video_input_mask_B_C_T_H_W": condition, "padding_mask": padding}
            want = net(**inputs)
            got = theirs(**dfmt.diffusers_inputs(TINY, **inputs))[0]
            assert got.shape == want.shape and torch.isfinite(want).all()
            relative = ((got - want).norm() / want.norm()).item()
            assert relative < 1e-5, relative
