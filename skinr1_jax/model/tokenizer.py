"""Tokenizer wrapper, the Qwen2.5-VL chat format, and the embedded byte-level BPE.

A `Tokenizer` wraps a `tokenizers.Tokenizer` loaded from a local Hugging Face folder
(tokenizer.json) or built by `build_embedded_tokenizer`; both carry the Qwen2.5-VL special
tokens, so prompts, image placeholders and stop ids are the same for the tiny embedded model
and for a real Qwen2.5-VL checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
# Qwen2.5-VL's special tokens in their checkpoint id order.
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN, IM_START, IM_END, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", VISION_START, VISION_END, "<|vision_pad|>",
    IMAGE_PAD, VIDEO_PAD,
)
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END
# Qwen2's pre-tokenisation split (digits one by one, words with their leading space).
PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                     r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen2-VL's Jinja chat template (images only), written into tokenizer_config.json so that
# transformers renders exactly what `Tokenizer.chat` renders.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Option labels as single tokens (`build_embedded_tokenizer(option_labels=True)`). Qwen's split
# makes `B: name` into `B`, `:`, ` name`, so every option name follows the same `:` and a copy
# of option B must key on the letter two tokens back; with `B:` one token the name follows its
# own label and a two-layer model's induction copy can find it (README "A letter-answering base").
OPTION_LABELS: tuple[str, ...] = tuple(f"{chr(ord('A') + i)}:" for i in range(26))
_REQUIRED = (PAD_TOKEN, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)


class Tokenizer:
    """Text <-> ids with Qwen2.5-VL special tokens and chat rendering."""

    def __init__(self, backend: HFTokenizer, source: str = "<memory>"):
        self.backend = backend
        self.source = source
        self._ids = {}
        for tok in _REQUIRED:
            i = backend.token_to_id(tok)
            if i is None:
                raise ValueError(f"tokenizer {source} lacks the special token {tok!r}")
            self._ids[tok] = i

    # -- ids ------------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return self._ids[PAD_TOKEN]

    @property
    def eos_id(self) -> int:
        """End of an assistant turn, `<|im_end|>`."""
        return self._ids[IM_END]

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Ids that end generation (Qwen2.5-VL-Instruct's generation_config: im_end, endoftext)."""
        return (self._ids[IM_END], self._ids[PAD_TOKEN])

    @property
    def im_start_id(self) -> int:
        return self._ids[IM_START]

    @property
    def image_pad_id(self) -> int:
        return self._ids[IMAGE_PAD]

    @property
    def vision_start_id(self) -> int:
        return self._ids[VISION_START]

    @property
    def vision_end_id(self) -> int:
        return self._ids[VISION_END]

    @property
    def vocab_size(self) -> int:
        """Number of ids including added tokens (a model's embedding may be larger)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def model_token_ids(self) -> dict[str, int]:
        """The ModelConfig special-id fields for this tokenizer: `tiny_config(v, **tok.model_token_ids())`."""
        return {"image_token_id": self.image_pad_id, "vision_start_token_id": self.vision_start_id,
                "vision_end_token_id": self.vision_end_id, "video_token_id": self._ids[VIDEO_PAD]}

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    # -- text -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special-token strings inside it become their single ids."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                   skip_special_tokens=skip_special_tokens)

    def decode_batch(self, seqs: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return self.backend.decode_batch([[int(i) for i in s] for s in seqs],
                                         skip_special_tokens=skip_special_tokens)

    def chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render messages in the Qwen2.5-VL chat format (same text as its Jinja template).

        A message is {"role": str, "content": str | list of parts}; a part is
        {"type": "text", "text": ...} or {"type": "image", ...} (rendered as one
        `<|vision_start|><|image_pad|><|vision_end|>`). A default system turn is added when
        the first message is not a system message.
        """
        out = []
        for i, msg in enumerate(messages):
            if "role" not in msg or "content" not in msg:
                raise ValueError(f"chat message {i} needs 'role' and 'content', got keys {sorted(msg)}")
            if i == 0 and msg["role"] != "system":
                out.append(f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n")
            content = msg["content"]
            if isinstance(content, str):
                body = content
            else:
                parts = []
                for j, part in enumerate(content):
                    if part.get("type") == "image" or "image" in part or "image_url" in part:
                        parts.append(IMAGE_PLACEHOLDER)
                    elif "text" in part:
                        parts.append(part["text"])
                    else:
                        raise ValueError(f"chat message {i} part {j}: neither text nor image: {part!r}")
                body = "".join(parts)
            out.append(f"{IM_START}{msg['role']}\n{body}{IM_END}\n")
        if add_generation_prompt:
            out.append(f"{IM_START}assistant\n")
        return "".join(out)

    # -- files ----------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write tokenizer.json + tokenizer_config.json (loadable by us and by transformers)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"), pretty=True)
        (out / "tokenizer_config.json").write_text(_tokenizer_config_json())
        return out


def _tokenizer_config_json() -> str:
    cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 32768,
        "chat_template": CHAT_TEMPLATE,
    }
    return json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a local folder holding tokenizer.json (a Hugging Face model folder or ours)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    file = folder / "tokenizer.json"
    if file.is_file():
        try:
            backend = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"cannot parse {file}: {e}") from e
        return Tokenizer(backend, str(folder))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        # Slow-format folder: let transformers assemble the fast pipeline, offline.
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return Tokenizer(hf.backend_tokenizer, str(folder))
    raise FileNotFoundError(f"{folder} has neither tokenizer.json nor vocab.json + merges.txt")


def _empty_bpe() -> HFTokenizer:
    tok = HFTokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                          fuse_unk=False, byte_fallback=False))
    # Same pipeline as Qwen2's tokenizer, so transformers' Qwen2Tokenizer reproduces it.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def build_embedded_tokenizer(corpus: Iterable[str], vocab_size: int,
                             out_dir: str | os.PathLike | None = None, *,
                             option_labels: bool = False) -> Tokenizer:
    """Train a deterministic byte-level BPE on `corpus` with the Qwen2.5-VL special tokens.

    Ids 0..13 are the special tokens (pad = 0), then the 256 byte symbols, then merges, then
    with `option_labels` the 26 OPTION_LABELS (ordinary tokens, matched as whole words, within
    `vocab_size`). Every byte string is encodable. The same corpus gives a byte-identical
    tokenizer.json.
    """
    labels = OPTION_LABELS if option_labels else ()
    floor = len(SPECIAL_TOKENS) + 256 + len(labels)
    if vocab_size <= floor:
        raise ValueError(f"vocab_size must exceed {floor} (specials + 256 bytes"
                         f"{' + option labels' if labels else ''}), got {vocab_size}")
    tok = _empty_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(labels), min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((t for t in corpus), trainer=trainer)
    tok.add_tokens([AddedToken(label, single_word=True, normalized=False) for label in labels])
    wrapped = Tokenizer(tok, "<embedded>")
    if out_dir is not None:
        wrapped.save(out_dir)
        wrapped.source = str(out_dir)
    return wrapped
