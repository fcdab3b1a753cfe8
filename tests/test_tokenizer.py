from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skinr1_jax.model.tokenizer import (
    IMAGE_PLACEHOLDER,
    SPECIAL_TOKENS,
    Tokenizer,
    build_embedded_tokenizer,
    load_tokenizer,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = [
    "An erythematous, well-demarcated plaque with silvery scale on the extensor elbow.",
    "Melanoma: asymmetry, irregular border, variegated colour, diameter over 6 mm, evolution.",
    "Basal cell carcinoma presents as a pearly papule with arborizing telangiectasia.",
    "<thinking>The lesion is scaly and annular.</thinking><diagnosis>tinea corporis</diagnosis>",
    "Which diagnosis fits best? A. psoriasis B. eczema C. lichen planus D. seborrheic keratosis",
] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return build_embedded_tokenizer(CORPUS, 512, tmp_path_factory.mktemp("tok"))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_round_trip_arbitrary_unicode(tok, text):
    # The Qwen2 pipeline NFC-normalises before byte-level BPE, so NFC text round-trips exactly.
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


def test_round_trip_non_corpus_text(tok):
    for text in ["日本語のテキスト 🙂", "tab\tnew\nline\r\n  spaces  ", "zzzz qqqq 0123456789", ""]:
        assert tok.decode(tok.encode(text)) == text


def test_specials_are_single_ids(tok):
    assert tok.vocab_size <= 512
    ids = {s: tok.encode(s) for s in SPECIAL_TOKENS}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == len(SPECIAL_TOKENS)
    assert tok.pad_id == ids["<|endoftext|>"][0]
    assert tok.eos_id == ids["<|im_end|>"][0]
    assert tok.image_pad_id == ids["<|image_pad|>"][0]
    assert tok.vision_start_id == ids["<|vision_start|>"][0]
    assert tok.vision_end_id == ids["<|vision_end|>"][0]
    assert tok.model_token_ids() == {
        "image_token_id": ids["<|image_pad|>"][0], "video_token_id": ids["<|video_pad|>"][0],
        "vision_start_token_id": ids["<|vision_start|>"][0], "vision_end_token_id": ids["<|vision_end|>"][0]}
    text = "a<|im_start|>b<|image_pad|><|image_pad|>"
    ids = tok.encode(text)
    assert ids.count(tok.image_pad_id) == 2
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_bpe_learned_merges(tok):
    # A frequent corpus word must compress well below one id per byte.
    assert len(tok.encode(" erythematous")) <= 3


def test_build_is_deterministic(tok, tmp_path):
    first = (tmp_path / "a")
    build_embedded_tokenizer(CORPUS, 512, first)
    # A separate process has fresh hash seeds (Python and Rust): the bytes must not change.
    code = ("import sys; from skinr1_jax.model.tokenizer import build_embedded_tokenizer as b; "
            "import json; b(json.loads(sys.argv[1]), 512, sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, json.dumps(CORPUS), str(tmp_path / "b")], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=str(REPO_ROOT))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (first / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (pathlib.Path(tok.source) / "tokenizer.json").read_bytes()


def test_chat_rendering(tok):
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "Psoriasis."},
        {"role": "user", "content": "Sure?"},
    ]
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
                "<|im_start|>assistant\nPsoriasis.<|im_end|>\n"
                "<|im_start|>user\nSure?<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert tok.chat(msgs) == expected
    assert tok.chat(msgs, add_generation_prompt=False) == expected[: -len("<|im_start|>assistant\n")]
    sys_msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.chat(sys_msgs, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    ids = tok.encode(tok.chat(msgs))
    assert ids.count(tok.image_pad_id) == 1 and ids[-2:] != [tok.eos_id]
    with pytest.raises(ValueError, match="part 0"):
        tok.chat([{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(ValueError, match="message 0"):
        tok.chat([{"content": "x"}])


def test_transformers_reads_our_folder_identically(tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tok.source, local_files_only=True)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Dx? é 12"}]}]
    assert hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == tok.chat(msgs)
    for text in [tok.chat(msgs), "Cafe\u0301 naïve 1234 <|im_end|>", "  lots   of\n\nspace "]:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf.eos_token_id == tok.eos_id and hf.pad_token_id == tok.pad_id


def test_load_folder_saved_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import AddedToken, Tokenizer as RawTokenizer, models, pre_tokenizers, trainers

    # A tiny GPT-2-style BPE, wrapped as transformers' Qwen2Tokenizer with Qwen's specials, saved.
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    model = json.loads(raw.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    hf = transformers.Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    hf.add_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    hf.save_pretrained(tmp_path / "hf")

    ours = load_tokenizer(tmp_path / "hf")
    for text in ["Melanoma with an irregular border.", "x<|im_start|>user\nhi<|im_end|>", "ünïcödé 42"]:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False)
        assert ours.decode(ours.encode(text)) == hf.decode(hf.encode(text, add_special_tokens=False))
    assert ours.image_pad_id == hf.convert_tokens_to_ids("<|image_pad|>")
    assert ours.eos_id == hf.convert_tokens_to_ids("<|im_end|>")
    assert ours.encode(IMAGE_PLACEHOLDER) == [ours.vision_start_id, ours.image_pad_id, ours.vision_end_id]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_tokenizer(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(bad)
    with pytest.raises(ValueError, match="vocab_size"):
        build_embedded_tokenizer(CORPUS, 100)


def test_folder_without_specials_is_rejected(tmp_path):
    from tokenizers import Tokenizer as RawTokenizer, models

    raw = RawTokenizer(models.BPE())
    (tmp_path / "plain").mkdir()
    raw.save(str(tmp_path / "plain" / "tokenizer.json"))
    with pytest.raises(ValueError, match="<\\|endoftext\\|>"):
        load_tokenizer(tmp_path / "plain")


def test_option_labels_are_single_tokens_within_the_vocab(tmp_path):
    transformers = pytest.importorskip("transformers")
    corpus = CORPUS + ["Which?\nA: psoriasis\nB: lichen planus\nC: eczema\nD: tinea"] * 20
    tok = build_embedded_tokenizer(corpus, 512, tmp_path, option_labels=True)
    plain = build_embedded_tokenizer(corpus, 512)
    assert tok.vocab_size <= 512 and plain.vocab_size <= 512
    text = "Options:\nB: lichen planus, off its path\n<final diagnosis>C: eczema</final diagnosis>"
    ids = tok.encode(text)
    pieces = [tok.decode([i]) for i in ids]
    # The name follows its own label, not a `:` shared by every option.
    assert pieces[pieces.index("B:") + 1] == " lichen" and "C:" in pieces
    assert "B:" not in [plain.decode([i]) for i in plain.encode(text)]
    assert tok.decode(ids) == text
    # Only whole words: a label glued to a word stays ordinary text.
    assert "A:" not in [tok.decode([i]) for i in tok.encode("HbA: 7")]
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert hf.encode(text, add_special_tokens=False) == ids
    with pytest.raises(ValueError, match="option labels"):
        build_embedded_tokenizer(corpus, 14 + 256 + 26, option_labels=True)
