"""Reason1 text conditioning: the official hidden-state combination (reference case F), the prompt template,
512-token padding, strict loading and the encoder identity the embedding cache keys on.

The encoder folder is built offline: a tiny random Qwen2.5-VL (transformers' own classes, saved with
save_pretrained) and a tiny byte-level BPE tokenizer trained on two sentences, with the special tokens
and the text part of the Qwen2-VL chat template. It is not the Qwen tokenizer, but it goes through the
same loading and templating code as the real folder would.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cosmos_engine.errors import CheckpointError
from cosmos_engine.models.text_encoder import (NUM_TOKENS, SYSTEM_PROMPT, TextEncoder, drop_text, encoder_identity,
                                               full_concat, mean_normalize, tiny_encoder, write_tiny_encoder)
from cosmos_engine.models.text_encoder import TINY_HIDDEN as HIDDEN, TINY_LAYERS as NUM_LAYERS
from tests.conftest import load_reference_case

CAPTION = "A video of sks teal robot."
@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reason1_tiny")
    write_tiny_encoder(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def encoder(encoder_folder):
    return TextEncoder(encoder_folder, dtype=torch.float32)


def count_embed_calls(encoder: TextEncoder, monkeypatch) -> list[list[str]]:
    """Record the prompts of every model run of `encoder`."""
    calls: list[list[str]] = []
    original = encoder.embed

    def embed(captions):
        calls.append(list(captions))
        return original(captions)

    monkeypatch.setattr(encoder, "embed", embed)
    return calls


# ---- the official combination (case F) -----------------------------------------------------------------------

def test_full_concat_matches_official_bf16_math_exactly():
    case = load_reference_case("text_embedding_combination.pt")
    hidden = [h.to(torch.bfloat16) for h in case["inputs"]["hidden_states_bf16_as_fp32"]]
    out = full_concat(hidden)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 8, 4 * 48)
    assert torch.equal(out.float(), case["outputs"]["full_concat_bf16_as_fp32"])


def test_full_concat_fp32_math_matches_within_input_rounding():
    """`full_concat_fp32_math` was computed from the fp32 hidden states *before* their bf16 rounding, which
    the file does not contain; only the bf16-rounded values are stored. So our fp32 math on the stored
    values can match only up to that rounding: |dh| <= 2^-9 |h| per element moves a normalised value by at
    most about 2^-9 * max|h| / std per token (mean and std move by less). The bf16 math path above is exact."""
    case = load_reference_case("text_embedding_combination.pt")
    hidden = case["inputs"]["hidden_states_bf16_as_fp32"]
    out = full_concat(hidden)
    ref = case["outputs"]["full_concat_fp32_math"]
    assert out.dtype == torch.float32
    bound = torch.cat([2 * 2**-9 * h.abs().amax(-1, keepdim=True) / h.std(-1, keepdim=True) * torch.ones_like(h)
                       for h in hidden[1:]], dim=-1)
    assert ((out - ref).abs() <= bound).all()
    # and the math itself is exact in fp32 against fp64
    assert torch.allclose(out.double(), full_concat([h.double() for h in hidden]), atol=1e-6, rtol=0)


def test_mean_normalize_uses_unbiased_std():
    h = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    expected = (h - 3.0) / (torch.tensor(14.0 / 3).sqrt() + 1e-8)
    assert torch.allclose(mean_normalize(h), expected)


# ---- prompt, tokens, hidden states -----------------------------------------------------------------------------

def test_prompt_template_and_padding(encoder):
    rendered = encoder.render(CAPTION)
    assert rendered == (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{CAPTION}<|im_end|>\n")
    ids = encoder.token_ids([CAPTION, ""])
    assert ids.shape == (2, NUM_TOKENS) and ids.dtype == torch.long
    real = encoder.tokenizer(rendered)["input_ids"]
    assert ids[0, :len(real)].tolist() == real
    assert (ids[0, len(real):] == encoder.tokenizer.pad_token_id).all()


def test_long_prompts_are_cut_to_512_tokens(encoder):
    caption = "sks teal robot " * 400
    full = encoder.tokenizer(encoder.render(caption))["input_ids"]
    assert len(full) > NUM_TOKENS
    ids = encoder.token_ids([caption])[0].tolist()
    assert ids == full[:NUM_TOKENS]
    assert ids[-1] != encoder.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_embedding_concatenates_layers_1_to_L_with_the_last_after_the_final_norm(encoder):
    """Capture every decoder layer's output with hooks and rebuild the official combination by hand:
    layers 1..L-1 as they leave the layer, layer L after the final RMSNorm, each normalised, concatenated."""
    model = encoder.model
    outputs = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
             for layer in model.layers]
    try:
        emb = encoder.embed([CAPTION, ""])
    finally:
        for hook in hooks:
            hook.remove()
    assert len(outputs) == NUM_LAYERS
    states = [None, *outputs[:-1], model.norm(outputs[-1])]
    assert emb.shape == (2, NUM_TOKENS, NUM_LAYERS * HIDDEN) == (2, NUM_TOKENS, encoder.embedding_dim)
    assert torch.allclose(emb, full_concat(states), atol=1e-5)
    # pad positions are attended and kept, not zeroed
    assert emb[0, -1].abs().sum() > 0


def test_no_attention_mask_is_causal_over_all_positions(encoder):
    """Without a mask the 512 positions see only earlier ones: a prompt's embedding at its own tokens does
    not depend on what follows, and the pads after it are ordinary positions."""
    ids = encoder.token_ids([CAPTION])
    with torch.no_grad():
        full = encoder.model(input_ids=ids, output_hidden_states=True).hidden_states
        prefix = encoder.model(input_ids=ids[:, :40], output_hidden_states=True).hidden_states
    assert torch.allclose(full_concat(full)[:, :40], full_concat(prefix), atol=1e-5)


def test_empty_prompt_is_encoded_and_dropped_text_is_zeros(encoder):
    emb = encoder.encode(["", CAPTION])
    assert emb[0].abs().sum() > 0 and not torch.equal(emb[0], emb[1])
    assert torch.equal(emb[0], encoder.embed([""])[0])
    assert torch.equal(drop_text(emb, 1.0), torch.zeros_like(emb))
    assert torch.equal(drop_text(emb, 0.0), emb)
    dropped = drop_text(emb.repeat(8, 1, 1), 0.5, torch.Generator().manual_seed(0))
    kept = [torch.equal(d, e) for d, e in zip(dropped, emb.repeat(8, 1, 1))]
    zeroed = [not d.any() for d in dropped]
    assert all(k != z for k, z in zip(kept, zeroed)) and any(kept) and any(zeroed)


# ---- loading -----------------------------------------------------------------------------------------------------

def test_a_folder_without_config_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        TextEncoder(tmp_path)


@pytest.mark.parametrize("damage, message", [
    ("missing", r"1 missing: model.language_model.layers.1.mlp.up_proj.weight"),
    ("extra", r"1 unexpected: model.language_model.extra.weight"),
    ("shape", r"wrong shape: .*model.language_model.norm.weight"),
])
def test_language_model_keys_are_checked_strictly(encoder_folder, tmp_path, damage, message):
    folder = tmp_path / "damaged"
    shutil.copytree(encoder_folder, folder)
    state = load_file(folder / "model.safetensors")
    if damage == "missing":
        del state["model.layers.1.mlp.up_proj.weight"]
    elif damage == "extra":
        state["model.extra.weight"] = torch.zeros(2)
    else:
        state["model.norm.weight"] = torch.zeros(5)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=message):
        TextEncoder(folder, dtype=torch.float32)


# ---- identity and batching (the cache itself: tests/data/test_text_embeddings.py) ------------------------------

def test_each_distinct_prompt_of_a_call_is_encoded_once(encoder, monkeypatch):
    calls = count_embed_calls(encoder, monkeypatch)
    emb = encoder.encode(["a", "b", "a"])
    assert calls == [["a", "b"]] and emb.shape == (3, NUM_TOKENS, NUM_LAYERS * HIDDEN)
    assert torch.equal(emb[0], emb[2]) and not torch.equal(emb[0], emb[1])


def test_the_identity_names_dtype_and_weights(encoder_folder, tmp_path):
    identity = encoder_identity(encoder_folder, torch.float32)
    assert encoder_identity(encoder_folder, torch.float64) != identity
    retrained = tmp_path / "retrained"
    shutil.copytree(encoder_folder, retrained)
    state = load_file(retrained / "model.safetensors")
    state["model.norm.weight"] = state["model.norm.weight"] * 1.5
    save_file(state, retrained / "model.safetensors", metadata={"format": "pt"})
    assert encoder_identity(retrained, torch.float32) != identity


def test_file_hashes_are_remembered_while_size_and_mtime_hold(encoder_folder, tmp_path):
    folder, memo = tmp_path / "encoder", tmp_path / "cache" / "encoder_files.json"
    shutil.copytree(encoder_folder, folder)
    true_identity = encoder_identity(folder, torch.float32, memo)
    entries = json.loads(memo.read_text())
    weights = str((folder / "model.safetensors").resolve())
    assert entries[weights]["size"] == (folder / "model.safetensors").stat().st_size
    # The memo is trusted while size and mtime match, so the file is not read again: a doctored digest shows.
    entries[weights]["sha256"] = "0" * 64
    memo.write_text(json.dumps(entries))
    assert encoder_identity(folder, torch.float32, memo) != true_identity
    stat = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: hashed again
    assert encoder_identity(folder, torch.float32, memo) == true_identity
    (folder / "model.safetensors").unlink()  # entries of files that are gone are dropped
    encoder_identity(folder, torch.float32, memo)
    assert weights not in json.loads(memo.read_text())


def test_encode_wants_a_list_of_prompts(encoder):
    with pytest.raises(ValueError, match="sequence of strings"):
        encoder.encode(CAPTION)


def test_a_damaged_cached_tiny_encoder_is_written_again(tmp_path, caplog):
    folder = tiny_encoder(tmp_path / "tiny_reason1")
    identity = TextEncoder(folder, dtype=torch.float32).identity
    weights = folder / "model.safetensors"
    for damage in (lambda: weights.write_bytes(weights.read_bytes()[:1000]),
                   lambda: (folder / "tokenizer.json").write_text("garbage"),
                   lambda: (folder / ".files.json").unlink()):  # e.g. a write killed before its record
        damage()
        with caplog.at_level(logging.WARNING):
            assert tiny_encoder(folder) == folder
        assert f"cached tiny text encoder {folder} is" in caplog.text
        caplog.clear()
        assert TextEncoder(folder, dtype=torch.float32).identity == identity  # the same deterministic files
