"""Reason1 text conditioning of the 2B model (official `predict2/text_encoders/text_encoder.py`).

What the official does, all reproduced here (reference/vae_data_io.md §2):
* The encoder is Cosmos-Reason1-7B, i.e. the Qwen2.5-VL-7B language model (28 layers x 3584) in bf16; the
  vision tower and lm_head are never used. It is built from transformers' Qwen2.5-VL classes and read
  from a local folder in the Hugging Face layout (config.json, tokenizer files, *.safetensors).
* Each caption becomes the conversation [system: SYSTEM_PROMPT, user: caption], rendered with the
  folder's chat template (no generation prompt, no vision ids) and tokenized without padding; with the
  Qwen2-VL template that is
  `<|im_start|>system\\n{SYSTEM_PROMPT}<|im_end|>\\n<|im_start|>user\\n{caption}<|im_end|>\\n`.
* Token ids are right-padded with the pad token to NUM_TOKENS = 512, or cut to the first 512 (which drops
  the closing `<|im_end|>`). The language model runs without an attention mask (causal over all 512
  positions, pads included) at positions 0..511.
* Hidden states 1..L (index 0 is the token embedding; index L is the last layer after the final RMSNorm)
  are each normalised per token over the hidden dim, (h - mean) / (std_unbiased + 1e-8), in the model's
  dtype (bf16), and concatenated in layer order: [B, 512, L * hidden] = 100352 dims for the real model.
  Pad positions are not zeroed; the DiT attends to all 512.
* An empty caption is encoded like any other (the template around an empty user message). Training's
  text dropout multiplies a sample's embedding by 0 (`drop_text`), so a dropped prompt is all zeros, not
  the empty-caption embedding. At inference the unconditional branch uses the embedding of the negative
  prompt (`cosmos_engine.prompts.DEFAULT_NEGATIVE_PROMPT` unless the sample gives one), computed the same way.

Weights are loaded strictly: unlike the official (strict=False), a missing, unexpected or mis-shaped
language-model key is a CheckpointError, because a silent random layer would give garbage embeddings.

`encoder_identity` names an encoder folder for cache keys without loading it: a hash of every file in the
folder plus the settings above, so a changed encoder never reads an old entry. The embeddings cache itself,
shared by training and inference, is `cosmos_engine.data.text_embeddings`. Within one `encode` call a
prompt that appears several times is encoded once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from cosmos_engine.atomic import atomic_write
from cosmos_engine.errors import CheckpointError

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are a helpful assistant who will provide prompts to an image generator."
NUM_TOKENS = 512
# Bumped whenever the recipe below changes, so old cache entries stop matching.
_EMBEDDING_RECIPE = f"reason1-full_concat-v1|system={SYSTEM_PROMPT}|tokens={NUM_TOKENS}|eps=1e-8|unbiased"


def mean_normalize(hidden: torch.Tensor) -> torch.Tensor:
    """(h - mean) / (std + 1e-8) over the last dim, unbiased std, in h's dtype (official `mean_normalize`)."""
    return (hidden - hidden.mean(dim=-1, keepdim=True)) / (hidden.std(dim=-1, keepdim=True) + 1e-8)


def full_concat(hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate the normalised hidden states 1..L (index 0, the token embedding, is skipped) along the
    last dim in layer order: L tensors [B, N, H] -> [B, N, L * H]."""
    return torch.cat([mean_normalize(h) for h in hidden_states[1:]], dim=-1)


def drop_text(embeddings: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time text dropout as the official conditioner does it: each sample's whole embedding is
    multiplied by 0 with `probability` (one Bernoulli draw per sample, on the CPU)."""
    keep = torch.bernoulli(torch.full((embeddings.shape[0],), 1.0 - probability), generator=generator)
    return embeddings * keep.to(embeddings.device, embeddings.dtype).view(-1, *([1] * (embeddings.dim() - 1)))


def _file_digest(path: Path, memo: dict) -> str:
    """sha256 of a file's bytes, reused from `memo` while its size and mtime are unchanged."""
    stat = path.stat()
    key = str(path.resolve())
    entry = memo.get(key)
    if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
        return entry["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 * 2**20):
            digest.update(chunk)
    memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
    return memo[key]["sha256"]


def encoder_identity(folder: str | Path, dtype: torch.dtype, memo_file: Path | None = None) -> str:
    """A hash of every (non-hidden) file in the encoder folder, the compute dtype and the embedding recipe.
    Hashing the 16 GB of the real weights takes minutes, so file digests are remembered in `memo_file`
    (JSON, keyed by path, trusted while size and mtime are unchanged): the folder is hashed once, and a start
    with an unchanged folder reads no weight byte. Entries of files that no longer exist are dropped."""
    memo: dict = {}
    if memo_file is not None and memo_file.exists():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
    if not isinstance(memo, dict):
        memo = {}
    before = json.dumps(memo, sort_keys=True)
    identity = hashlib.sha256(f"{_EMBEDDING_RECIPE}|dtype={dtype}".encode())
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith("."):
            identity.update(f"{path.name}\0{_file_digest(path, memo)}\0".encode())
    memo = {key: entry for key, entry in memo.items() if Path(key).is_file()}
    if memo_file is not None and json.dumps(memo, sort_keys=True) != before:
        atomic_write(memo_file, json.dumps(memo, indent=1, sort_keys=True))
    return identity.hexdigest()


# transformers is imported where it is used: it takes seconds to import and only loading needs it.
def _load_tokenizer(folder: Path):
    """The folder's tokenizer and the chat template the official renders with: the processor's
    (`chat_template.json`) when the folder has one, else the tokenizer's own."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    processor_template = folder / "chat_template.json"
    template = (json.loads(processor_template.read_text())["chat_template"] if processor_template.exists()
                else tokenizer.chat_template)
    if not template:
        raise CheckpointError(f"{folder}: the tokenizer has no chat template (expected chat_template.json, "
                              "chat_template.jinja or a chat_template entry in tokenizer_config.json)")
    if tokenizer.pad_token_id is None:
        raise CheckpointError(f"{folder}: the tokenizer defines no pad token (Qwen2.5: <|endoftext|>)")
    return tokenizer, template


def _load_language_model(folder: Path, dtype: torch.dtype, device: torch.device):
    """The Qwen2.5-VL language model of the folder, loaded strictly (vision tower and lm_head dropped)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    full, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        folder, dtype=dtype, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True,
        attn_implementation="sdpa")
    unused = ("visual.", "model.visual.", "lm_head.")
    problems = []
    for what, keys in (("missing", info["missing_keys"]), ("unexpected", info["unexpected_keys"]),
                       ("wrong shape", info["mismatched_keys"])):
        names = sorted(str(k) for k in keys if not str(k).startswith(unused))
        if names:
            problems.append(f"{len(names)} {what}: " + ", ".join(names[:8]) + (", ..." if len(names) > 8 else ""))
    if problems:
        raise CheckpointError(f"{folder}: the language model weights do not match its config.json: "
                              + "; ".join(problems))
    model = full.model.language_model
    del full
    return model.to(device).eval().requires_grad_(False)


class TextEncoder:
    """Reason1 embeddings [B, 512, L * hidden] of captions.

    `TextEncoder(folder)` loads tokenizer and language model from a local folder (ModelConfig's
    `text_encoder_path`); `dtype=torch.bfloat16` is the official precision. `encode(prompts)` runs every
    distinct prompt through the model in batches of `batch_size` and returns the embeddings in prompt order.
    Loading takes the whole model into memory (15 GB for Reason1-7B): `data.text_embeddings` builds one only
    when a prompt is missing from its cache."""

    def __init__(self, folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                 batch_size: int = 8) -> None:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: not a text encoder folder (no config.json); expected a local copy of "
                                  "nvidia/Cosmos-Reason1-7B in the Hugging Face layout")
        self.folder = folder
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        log.info("text encoder: loading %s", folder)
        self.tokenizer, self.chat_template = _load_tokenizer(folder)
        self.model = _load_language_model(folder, dtype, self.device)
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        """Names this encoder for cache keys (`encoder_identity`: its files, dtype and the embedding recipe)."""
        if self._identity is None:
            self._identity = encoder_identity(self.folder, self.dtype)
        return self._identity

    @property
    def embedding_dim(self) -> int:
        """L * hidden: the DiT's `crossattn_proj_in_channels` (100352 for Reason1-7B)."""
        cfg = self.model.config
        return cfg.num_hidden_layers * cfg.hidden_size

    def render(self, caption: str) -> str:
        """The caption inside the official two-message conversation, as text."""
        messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                    {"role": "user", "content": [{"type": "text", "text": caption}]}]
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=False, add_vision_id=False)

    def token_ids(self, captions: Sequence[str]) -> torch.Tensor:
        """[B, 512] token ids: the rendered captions, right-padded with the pad token or cut to 512."""
        rows = []
        for caption in captions:
            ids = self.tokenizer(self.render(caption))["input_ids"][:NUM_TOKENS]
            rows.append(ids + [self.tokenizer.pad_token_id] * (NUM_TOKENS - len(ids)))
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def embed(self, captions: Sequence[str]) -> torch.Tensor:
        """Run the model on `captions` (no cache): [B, 512, L * hidden] in the model dtype."""
        out = self.model(input_ids=self.token_ids(captions), output_hidden_states=True, use_cache=False)
        return full_concat(out.hidden_states)

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings of `prompts` in order, [B, 512, L * hidden]; each distinct prompt is computed once."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"TextEncoder.encode: 'prompts' must be a non-empty sequence of strings, got {prompts!r}")
        distinct = list(dict.fromkeys(prompts))
        found: dict[str, torch.Tensor] = {}
        for start in range(0, len(distinct), self.batch_size):
            batch = distinct[start:start + self.batch_size]
            found.update(zip(batch, self.embed(batch)))
        return torch.stack([found[p] for p in prompts])


# --- A tiny random Reason1 stand-in, for the tiny recipes and the tests ---------------------------------------

# The text branch of the Qwen2-VL family chat template (the real one adds image/video placeholders).
_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_LAYERS, TINY_HIDDEN = 3, 32  # 3 x 32 = 96: the tiny DiT's crossattn_proj_in_channels


def write_tiny_encoder(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2.5-VL (transformers' own classes) and a tiny byte-level BPE tokenizer with the
    Qwen chat-template special tokens into `folder`, deterministically from `seed`. It is not Reason1, but it
    goes through exactly the loading, templating and hidden-state combination code the real folder does;
    its embeddings are 96 wide. Nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    folder = Path(folder)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([SYSTEM_PROMPT, "A video of sks teal robot."], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                        additional_special_tokens=specials[1:])
    tokenizer.chat_template = _TINY_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    ids = {t: bpe.token_to_id(t) for t in specials}
    text = dict(vocab_size=bpe.get_vocab_size(), hidden_size=TINY_HIDDEN, intermediate_size=64,
                num_hidden_layers=TINY_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=NUM_TOKENS, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TINY_HIDDEN,
                  fullatt_block_indexes=[0])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, bos_token_id=text["bos_token_id"],
                              eos_token_id=text["eos_token_id"], pad_token_id=text["pad_token_id"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    return folder


# Written beside the tiny encoder's files, hidden so that it is not part of the encoder identity.
_TINY_RECORD = ".files.json"


def _tiny_files(folder: Path) -> dict[str, str]:
    return {p.name: _file_digest(p, {}) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _tiny_encoder_problem(folder: Path) -> str | None:
    """None when `folder` holds exactly the files recorded when it was written, else why not."""
    if not folder.exists():
        return "missing"
    try:
        recorded = json.loads((folder / _TINY_RECORD).read_text())
    except (OSError, ValueError):
        return "incomplete (no readable record of its files)"
    if _tiny_files(folder) != recorded:
        return "corrupt (its files differ from those written)"
    return None


def tiny_encoder(folder: str | Path, seed: int = 0) -> Path:
    """The tiny random encoder in `folder` (a cache: `write_tiny_encoder`'s output, deterministic), written
    again when it is missing or its files are not those written (truncated, overwritten, half-written by a
    killed process). The new copy is built beside `folder` and renamed into place."""
    folder = Path(folder)
    problem = _tiny_encoder_problem(folder)
    if problem is None:
        return folder
    if problem != "missing":
        log.warning("the cached tiny text encoder %s is %s; writing it again", folder, problem)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tiny_encoder(tmp, seed)
    (tmp / _TINY_RECORD).write_text(json.dumps(_tiny_files(tmp)))
    if folder.is_dir():
        shutil.rmtree(folder)
    elif folder.exists():
        folder.unlink()
    os.replace(tmp, folder)
    return folder
