"""Chat encoding, SFT loss masks, fixed-shape collation and the resumable sharded iterator,
with the real embedded tokenizer, image processor and rotary index on a tiny config."""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest

from skinr1_jax.data import pipeline, tasks
from skinr1_jax.knowledge.vocab import MALIGNANCY_CLASSES
from skinr1_jax.model import get_rope_index, tiny_config
from skinr1_jax.model.tokenizer import Tokenizer, build_embedded_tokenizer

CORPUS = ["<thinking>A pink scaly plaque with a rolled border.</thinking>"
          "<final diagnosis>A, malignant</final diagnosis>",
          "What type of abnormality is present in this image? A: nevus B: melanoma C: psoriasis"] * 30
PIXELS = dict(min_pixels=32 * 32, max_pixels=32 * 32)   # 32 x 32 -> grid (1, 4, 4) -> 4 image tokens
RESPONSE = "<thinking>Brown macule, regular border.</thinking><final diagnosis>B, benign</final diagnosis>"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return build_embedded_tokenizer(CORPUS, 400)


@pytest.fixture(scope="module")
def cfg(tok: Tokenizer):
    return tiny_config(512, **tok.model_token_ids())


def image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def sft(tok, cfg, i: int, prompt: str = "Describe the lesion.", response: str = RESPONSE) -> dict:
    return pipeline.encode_sft(tok, prompt * (1 + i % 3), response * (1 + i % 2), image(i), cfg,
                               example_id=f"ex{i}", **PIXELS)


def test_encode_prompt_expands_image_and_ends_with_generation_prompt(tok, cfg) -> None:
    enc = pipeline.encode_prompt(tok, "What is this?", image(0), cfg, **PIXELS)
    ids = enc["input_ids"]
    t, h, w = enc["grid_thw"]
    assert (t, h, w) == (1, 4, 4) and enc["pixel_values"].shape == (16, cfg.vision.patch_dim)
    pads = np.flatnonzero(ids == tok.image_pad_id)
    assert len(pads) == t * h * w // cfg.vision.spatial_merge_size ** 2
    assert np.all(np.diff(pads) == 1)
    assert ids[pads[0] - 1] == tok.vision_start_id and ids[pads[-1] + 1] == tok.vision_end_id
    collapsed = np.concatenate([ids[:pads[0] + 1], ids[pads[-1] + 1:]])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert tok.decode(collapsed) == tok.chat(messages, add_generation_prompt=True)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    want, _ = get_rope_index(cfg, ids[None], np.ones((1, len(ids))), (enc["grid_thw"],))
    np.testing.assert_array_equal(enc["position_ids"], want[:, 0])
    system = pipeline.encode_prompt(tok, "x", image(0), cfg, system="Be brief.", **PIXELS)
    assert tok.decode(system["input_ids"]).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_sft_loss_mask_covers_exactly_the_response(tok, cfg) -> None:
    enc = sft(tok, cfg, 0)
    ids, targets, mask = enc["input_ids"], enc["targets"], enc["loss_mask"]
    np.testing.assert_array_equal(targets[:-1], ids[1:])
    assert tok.decode(ids[mask == 1]) == RESPONSE + "<|im_end|>"
    on = np.flatnonzero(mask)
    assert on[0] == enc["prompt_len"] and on[-1] == len(ids) - 1 and len(on) == len(ids) - enc["prompt_len"]
    assert tok.decode(ids[:enc["prompt_len"]]).endswith("<|im_start|>assistant\n")
    assert not np.any(np.isin(ids[mask == 1], [tok.image_pad_id, tok.vision_start_id, tok.im_start_id]))
    want, _ = get_rope_index(cfg, ids[None], np.ones((1, len(ids))), (enc["grid_thw"],))
    np.testing.assert_array_equal(enc["position_ids"], want[:, 0])


def test_collate_sft_fixed_shapes_and_filler_rows(tok, cfg) -> None:
    encs = [sft(tok, cfg, i) for i in range(5)]
    full = pipeline.collate_sft(encs[:4], 256, tok.pad_id, batch_size=4)
    short = pipeline.collate_sft(encs[4:], 256, tok.pad_id, batch_size=4)
    for key in ("input_ids", "attention_mask", "position_ids", "targets", "loss_mask", "pixel_values",
                "example_mask"):
        assert full[key].shape == short[key].shape, key
    assert full["input_ids"].shape == (4, 256) and full["position_ids"].shape == (3, 4, 256)
    assert full["grid_thw"] == short["grid_thw"] == ((1, 4, 4),) * 4
    np.testing.assert_array_equal(short["example_mask"], [1, 0, 0, 0])
    assert short["loss_mask"][1:].sum() == 0 and short["loss_mask"][0].sum() > 0
    # Right padding: real tokens first, then pad; positions equal the model's index on the batch.
    for i, e in enumerate(encs[:4]):
        n = len(e["input_ids"])
        assert full["attention_mask"][i, :n].all() and not full["attention_mask"][i, n:].any()
        assert (full["input_ids"][i, n:] == tok.pad_id).all()
        np.testing.assert_array_equal(full["input_ids"][i][full["loss_mask"][i] == 1],
                                      e["input_ids"][e["loss_mask"] == 1])
        np.testing.assert_array_equal(full["targets"][i, :n - 1], e["input_ids"][1:])
    want, _ = get_rope_index(cfg, full["input_ids"], full["attention_mask"], full["grid_thw"])
    np.testing.assert_array_equal(full["position_ids"], want)
    np.testing.assert_array_equal(full["pixel_values"], np.concatenate([e["pixel_values"] for e in encs[:4]]))


def test_bucketing_picks_the_smallest_fitting_bucket(tok, cfg) -> None:
    assert pipeline.bucket_length(10, (64, 32, 128)) == 32
    assert pipeline.bucket_length(300, (64, 128)) == 128
    with pytest.raises(ValueError, match="positive"):
        pipeline.bucket_length(3, ())
    encs = [sft(tok, cfg, i) for i in range(2)]
    longest = max(len(e["input_ids"]) for e in encs)
    batch = pipeline.collate_sft(encs, (longest - 1, longest + 7, 4 * longest), tok.pad_id)
    assert batch["input_ids"].shape == (2, longest + 7)


def test_truncation_keeps_prompt_and_image_and_counts(tok, cfg, caplog) -> None:
    long = sft(tok, cfg, 0, response=RESPONSE * 6)
    huge_prompt = sft(tok, cfg, 1, prompt="Describe the lesion carefully. " * 40)
    seq = long["prompt_len"] + 10
    assert huge_prompt["prompt_len"] > seq
    with caplog.at_level(logging.WARNING):
        batch = pipeline.collate_sft([long, huge_prompt], seq, tok.pad_id, batch_size=2)
    assert int(batch["num_truncated"]) == 1 and int(batch["num_dropped"]) == 1
    assert "1 responses truncated, 1 examples dropped" in caplog.text
    np.testing.assert_array_equal(batch["example_mask"], [1, 0])
    row = batch["input_ids"][0]
    assert (row == tok.image_pad_id).sum() == 4
    np.testing.assert_array_equal(row[:long["prompt_len"]], long["input_ids"][:long["prompt_len"]])
    assert batch["loss_mask"][0].sum() == 10   # the response tokens still in view
    with pytest.raises(ValueError, match="no example of the batch fits"):
        pipeline.collate_sft([huge_prompt], seq, tok.pad_id)


def question_encodings(tok, cfg, n: int) -> tuple[list[dict], list[tasks.Question]]:
    from skinr1_jax.taxonomy import Taxonomy

    specs = [{"name": "root", "parent": None, "malignancy": "benign"}] + [
        {"name": f"group {g}", "parent": "root"} for g in range(3)] + [
        {"name": f"disease {g}{d}", "parent": f"group {g}", "malignancy": "malignant" if d else "benign"}
        for g in range(3) for d in range(3)]
    tax = Taxonomy(specs)
    exs = [{"id": f"q{i}", "node": 4 + i % 9, "path": tax.path(4 + i % 9),
            "malignancy": tax.malignancy(4 + i % 9)} for i in range(n)]
    every_disease = [{"id": f"d{j}", "node": j, "path": tax.path(j), "malignancy": tax.malignancy(j)}
                     for j in range(4, 13)]
    qs = tasks.mcq_questions(exs, tax, seed=0, pool_examples=every_disease)
    return [pipeline.encode_question(tok, q, image(i), cfg, **PIXELS) for i, q in enumerate(qs)], qs


def test_collate_prompts_left_pads_and_carries_scores(tok, cfg) -> None:
    encs, qs = question_encodings(tok, cfg, 3)
    encs[1] = pipeline.encode_prompt(tok, "Short?", image(9), cfg, example_id="short", **PIXELS) | {
        k: encs[1][k] for k in ("option_scores", "num_options", "answer", "malignancy_true", "node_true",
                                "is_open")}
    batch = pipeline.collate_prompts(encs, (128, 512), tok.pad_id, batch_size=4)
    s = batch["input_ids"].shape[1]
    assert batch["input_ids"].shape == (4, s) and s in (128, 512)
    assert batch["attention_mask"][:, -1].all()      # the last column is real in every row
    for i, e in enumerate(encs):
        n = len(e["input_ids"])
        np.testing.assert_array_equal(batch["input_ids"][i, s - n:], e["input_ids"])
        assert not batch["attention_mask"][i, :s - n].any() and (batch["input_ids"][i, :s - n] == tok.pad_id).all()
    np.testing.assert_array_equal(batch["example_mask"], [1, 1, 1, 0])
    want, want_deltas = get_rope_index(cfg, batch["input_ids"], batch["attention_mask"], batch["grid_thw"])
    np.testing.assert_array_equal(batch["position_ids"], want)
    np.testing.assert_array_equal(batch["rope_deltas"], want_deltas)
    # Decoding continues at cache slot p with position p + delta: right after the prompt's max.
    np.testing.assert_array_equal(batch["rope_deltas"] + s, batch["position_ids"].max(axis=(0, 2)) + 1)
    assert batch["option_scores"].shape == (4, 26) and batch["example_ids"][:3] == ["q0", "short", "q2"]
    for i in (0, 2):
        q = qs[i]
        assert batch["option_scores"][i, batch["answer"][i]] == pytest.approx(0.75)
        np.testing.assert_array_equal(batch["option_scores"][i, :4], q.scores)
        assert batch["num_options"][i] == 4 and batch["node_true"][i] == q.node
        assert batch["malignancy_true"][i] == MALIGNANCY_CLASSES.index(q.malignancy) and batch["is_open"][i] == 0
    with pytest.raises(ValueError, match="q0.*max_seq_len"):
        pipeline.collate_prompts(encs, 16, tok.pad_id)


class CountingEncoder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, item: int) -> dict:
        self.calls += 1
        return {"x": np.int32(item)}


def collate_ints(encoded: list[dict]) -> np.ndarray:
    return np.asarray([e["x"] for e in encoded])


def test_iterator_resumes_exactly(tok, cfg) -> None:
    items = list(range(23))
    for k in (0, 1, 4, 7):          # 23 items, batch 5: batch 4 crosses the first epoch boundary
        run = pipeline.BatchIterator(items, 5, seed=7, encode_fn=CountingEncoder(), collate_fn=collate_ints)
        for _ in range(k):
            next(run)
        state = run.get_state()
        assert set(state) == {"epoch", "position"} and all(isinstance(v, int) for v in state.values())
        resumed = pipeline.BatchIterator(items, 5, seed=7, encode_fn=CountingEncoder(), collate_fn=collate_ints)
        resumed.restore(state)
        for _ in range(6):
            np.testing.assert_array_equal(next(resumed), next(run))
    # Full batches everywhere, each epoch a permutation, epochs differ.
    it = pipeline.BatchIterator(items, 5, seed=7, encode_fn=CountingEncoder(), collate_fn=collate_ints)
    stream = np.concatenate([next(it) for _ in range(46 // 5 + 1)])[:46]
    assert sorted(stream[:23]) == items and sorted(stream[23:]) == items
    assert not np.array_equal(stream[:23], stream[23:])
    with pytest.raises(ValueError, match="out of range"):
        it.restore({"epoch": 0, "position": 23})


def test_iterator_resume_with_real_batches(tok, cfg) -> None:
    encs = [sft(tok, cfg, i) for i in range(7)]

    def collate(e: list[dict]) -> dict:
        return pipeline.collate_sft(e, 256, tok.pad_id, batch_size=3)

    a = pipeline.BatchIterator(encs, 3, seed=1, encode_fn=lambda e: e, collate_fn=collate)
    next(a), next(a)
    b = pipeline.BatchIterator(encs, 3, seed=1, encode_fn=lambda e: e, collate_fn=collate)
    b.restore(a.get_state())
    nb, na = next(b), next(a)
    for key in ("input_ids", "loss_mask", "position_ids", "pixel_values"):
        np.testing.assert_array_equal(na[key], nb[key])
    assert na["example_ids"] == nb["example_ids"]


def test_shards_are_blocks_of_the_global_batch_and_resume_under_any_process_count(tok, cfg) -> None:
    items = list(range(50))
    make = lambda shard, count: pipeline.BatchIterator(
        items, 6, seed=3, encode_fn=CountingEncoder(), collate_fn=collate_ints,
        shard_index=shard, shard_count=count)
    single = make(0, 1)
    shards = {count: [make(i, count) for i in range(count)] for count in (2, 3)}
    for _ in range(12):                 # 72 rows: crosses an epoch boundary
        want = next(single)
        for count, its in shards.items():
            np.testing.assert_array_equal(np.concatenate([next(it) for it in its]), want)
    # A state saved by 3 processes resumes 2 processes (and 1) on the same global stream.
    state = shards[3][1].get_state()
    assert all(it.get_state() == state for it in shards[3])
    resumed = [make(i, 2) for i in range(2)]
    for it in resumed:
        it.restore(state)
    np.testing.assert_array_equal(np.concatenate([next(it) for it in resumed]), next(single))
    with pytest.raises(ValueError, match="shard_index"):
        make(3, 3)
    with pytest.raises(ValueError, match="not divisible"):
        make(0, 4)
    with pytest.raises(ValueError, match="num_epochs"):
        pipeline.BatchIterator(items, 4, seed=3, encode_fn=CountingEncoder(),
                               collate_fn=collate_ints, shard_index=0, shard_count=2, num_epochs=1)


def test_iterator_caches_encodings_and_stops_after_num_epochs() -> None:
    enc = CountingEncoder()
    it = pipeline.BatchIterator(list(range(10)), 4, seed=0, encode_fn=enc, collate_fn=collate_ints,
                                num_epochs=2, shuffle=False)
    batches = list(it)
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4]
    np.testing.assert_array_equal(np.concatenate(batches), list(range(10)) * 2)
    assert enc.calls == 10
    for size in (0, 2):   # sequential order evicts every item before its reuse
        small = CountingEncoder()
        list(pipeline.BatchIterator(list(range(10)), 4, seed=0, encode_fn=small, collate_fn=collate_ints,
                                    num_epochs=2, cache_size=size, shuffle=False))
        assert small.calls == 20


def test_split_host_and_batches_run_through_the_model(tok, cfg) -> None:
    import jax

    from skinr1_jax.model import forward, init_variables, unbox
    from skinr1_jax.train.losses import sft_loss

    encs = [sft(tok, cfg, i) for i in range(3)]
    batch = pipeline.collate_sft(encs, 256, tok.pad_id, batch_size=4)
    assert int(batch["num_truncated"]) == 0
    arrays, host = pipeline.split_host(batch)
    assert set(host) == {"grid_thw", "example_ids", "num_truncated", "num_dropped", "targets"}
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    variables = unbox(init_variables(cfg, jax.random.key(0)))
    logits, _ = forward(cfg, variables, arrays, grid_thw=host["grid_thw"])
    assert logits.shape == (4, 256, cfg.text.vocab_size) and np.isfinite(np.asarray(logits)).all()
    total, count = sft_loss(logits, jax.numpy.asarray(arrays["input_ids"]), jax.numpy.asarray(arrays["loss_mask"]))
    assert int(count) == sum(int(e["loss_mask"].sum()) for e in encs)   # filler row adds nothing
    assert np.isfinite(float(total))


def test_image_cache_preprocesses_each_example_once(tok, cfg) -> None:
    cache = pipeline.ImageCache(max_entries=8)
    a = pipeline.encode_prompt(tok, "one", image(3), cfg, example_id="e3", image_cache=cache, **PIXELS)
    b = pipeline.encode_sft(tok, "two", "x", image(3), cfg, example_id="e3", image_cache=cache, **PIXELS)
    c = pipeline.encode_prompt(tok, "one", image(3), cfg, image_cache=cache, min_pixels=64 * 64,
                               max_pixels=64 * 64, example_id="e3")
    assert (cache.hits, cache.misses) == (1, 2)
    assert a["pixel_values"] is b["pixel_values"]
    uncached = pipeline.encode_prompt(tok, "one", image(3), cfg, **PIXELS)
    np.testing.assert_array_equal(a["pixel_values"], uncached["pixel_values"])
    assert c["grid_thw"] == (1, 8, 8)


def test_sft_lengths_equal_the_encoded_lengths(tok, cfg) -> None:
    """Length grouping measures every item up front from the tokenizer and the image size
    alone; it must agree with the full encoding, image sizes and aspects included."""
    from skinr1_jax.rollout import Encoder

    rng = np.random.default_rng(0)
    images = {f"e{i}": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
              for i, (h, w) in enumerate([(32, 32), (48, 16), (64, 96), (20, 70), (130, 40)])}
    images["pil"] = PIL.Image.fromarray(images["e2"]).convert("L")   # a greyscale PIL image
    enc = Encoder(tok, cfg, min_pixels=16 * 16, max_pixels=64 * 64,
                  cache=pipeline.ImageCache(max_entries=0))
    items = [{"example_id": key, "prompt": "Describe the lesion. " * (1 + i % 4),
              "response": RESPONSE * (1 + i % 3)}
             for i, key in enumerate(list(images) * 3)]
    encoded = [len(enc.sft(it["prompt"], it["response"], images[it["example_id"]],
                           it["example_id"])["input_ids"]) for it in items]
    assert len(set(encoded)) > 5                       # the sizes and texts do vary
    np.testing.assert_array_equal(enc.sft_lengths(items, images), encoded)
    with pytest.raises(ValueError, match="3 texts for 2 image grids"):
        pipeline.sft_lengths(tok, [("a", "b")] * 3, [(1, 4, 4)] * 2, cfg)


def test_open_question_encoding_marks_is_open(tok, cfg) -> None:
    q = tasks.open_question({"id": "o1", "node": 3, "path": [1, 3], "malignancy": "benign"})
    enc = pipeline.encode_question(tok, q, image(1), cfg, **PIXELS)
    assert enc["is_open"] == 1 and enc["answer"] == -1 and enc["num_options"] == 0
    assert not enc["option_scores"].any() and enc["node_true"] == 3
    assert "What skin disease" in tok.decode(enc["input_ids"])


def test_length_grouped_batches_cover_each_epoch_pad_less_and_resume() -> None:
    rng = np.random.default_rng(0)
    items = list(range(203))
    lengths = rng.integers(20, 300, size=len(items))
    seen_lengths: list[int] = []

    def collate(encoded: list[dict], length: int | None = None) -> np.ndarray:
        seen_lengths.append(length)
        return np.asarray([e["x"] for e in encoded])

    make = lambda shard=0, count=1: pipeline.BatchIterator(
        items, 8, seed=5, encode_fn=CountingEncoder(), collate_fn=collate, lengths=lengths,
        group_batches=4, shard_index=shard, shard_count=count)
    it = make()
    batches = [next(it) for _ in range(2 * 203 // 8)]
    stream = np.concatenate(batches)
    # Every item once per epoch (the stream runs on across the boundary), epochs differ.
    assert sorted(stream[:203]) == items and len(set(stream[203:].tolist())) == len(stream) - 203
    assert not np.array_equal(stream[203:], stream[:len(stream) - 203])
    # Collate gets the longest row of each (global) batch ...
    assert seen_lengths[:len(batches)] == [int(lengths[b].max()) for b in batches]
    # ... which is far shorter on average than in ungrouped batches of the same items.
    ungrouped = pipeline.BatchIterator(items, 8, seed=5, encode_fn=CountingEncoder(),
                                       collate_fn=collate_ints)
    plain = [int(lengths[next(ungrouped)].max()) for _ in range(len(batches))]
    assert np.mean(seen_lengths[:len(batches)]) < np.mean(plain) - 30
    # Exact resume mid-epoch, and two processes see blocks of the same global batches.
    resumed = make()
    resumed.restore(it.get_state())
    pair = [make(0, 2), make(1, 2)]
    for p in pair:
        p.restore(it.get_state())
    for _ in range(5):
        want = next(it)
        np.testing.assert_array_equal(next(resumed), want)
        np.testing.assert_array_equal(np.concatenate([next(p) for p in pair]), want)
    with pytest.raises(ValueError, match="lengths"):
        pipeline.BatchIterator(items, 8, seed=5, encode_fn=CountingEncoder(), collate_fn=collate,
                               lengths=lengths[:10], group_batches=4)


def test_collate_pads_to_the_bucket_of_the_global_length(tok, cfg) -> None:
    encs = [sft(tok, cfg, i) for i in range(3)]
    longest = max(len(e["input_ids"]) for e in encs)
    buckets = tuple(range(32, 512, 32))
    own = pipeline.collate_sft(encs, buckets, tok.pad_id, batch_size=3)
    assert own["input_ids"].shape[1] == -(-longest // 32) * 32
    wider = pipeline.collate_sft(encs, buckets, tok.pad_id, batch_size=3, length=longest + 40)
    assert wider["input_ids"].shape[1] == -(-(longest + 40) // 32) * 32
    np.testing.assert_array_equal(wider["input_ids"][:, :own["input_ids"].shape[1]], own["input_ids"])
