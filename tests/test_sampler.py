"""The KV-cache sampler: greedy equals transformers `generate`; cached decoding equals a full
forward over prompt + completion; sampled frequencies follow softmax(logits / T) restricted
to the top-k / top-p support; EOS and stop strings; no recompilation for equal shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from skinr1_jax.model import forward, get_rope_index, tiny_config
from skinr1_jax.model.sampler import (cache_buckets, choose_tokens, draw_categorical, filter_logits,
                                      sample, trace_count)
from skinr1_jax.rollout import vision_ids

GRID = ((1, 4, 4),)


@pytest.fixture(scope="module")
def tok(sampler_tokenizer):
    return sampler_tokenizer


@pytest.fixture(scope="module")
def model(sampler_model):
    return sampler_model


def _prompts(cfg, tok, texts_with_image, width=None):
    """Left-padded batch (to `width` when given); each entry (text, has_image)."""
    m2 = cfg.vision.spatial_merge_size ** 2
    rows, grids = [], []
    for text, has_image in texts_with_image:
        ids = tok.encode(text)
        if has_image:
            t, h, w = GRID[0]
            ids = [tok.vision_start_id] + [tok.image_pad_id] * (t * h * w // m2) + [tok.vision_end_id] + ids
            grids.append(GRID[0])
        rows.append(ids)
    s = width or max(len(r) for r in rows)
    ids = np.full((len(rows), s), tok.pad_id, np.int32)
    mask = np.zeros((len(rows), s), np.int32)
    for i, r in enumerate(rows):
        ids[i, s - len(r):] = r
        mask[i, s - len(r):] = 1
    grid = tuple(grids)
    pos, deltas = get_rope_index(cfg, ids, mask, grid or None)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "rope_deltas": deltas}
    if grid:
        n = sum(t * h * w for t, h, w in grid)
        rng = np.random.default_rng(0)
        batch["pixel_values"] = rng.standard_normal((n, cfg.vision.patch_dim)).astype(np.float32)
        batch["grid_thw"] = grid
    return batch


def _full_forward(cfg, variables, batch, completions):
    """Logits of one uncached forward over [prompt | completion] per row (left padding kept)."""
    ids = np.concatenate([batch["input_ids"], completions], axis=1)
    mask = np.concatenate([batch["attention_mask"], np.ones_like(completions)], axis=1)
    grid = batch.get("grid_thw")
    # Completion positions continue from each row's largest prompt position on all three
    # axes (get_rope_index cannot be used: a random model may emit an image-pad id).
    prompt_pos, _ = get_rope_index(cfg, batch["input_ids"], batch["attention_mask"], grid)
    steps = np.arange(completions.shape[1])[None, None, :]
    cont = np.broadcast_to(prompt_pos.max(axis=(0, 2))[None, :, None] + 1 + steps,
                           (3, ids.shape[0], completions.shape[1]))
    pos = np.concatenate([prompt_pos, cont], axis=2)
    full = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    if grid:
        full["pixel_values"] = batch["pixel_values"]
    logits, _ = forward(cfg, variables, full, grid_thw=grid)
    return np.asarray(logits)


# Tests share a few compiled programs: the standard batch (row 0 with an image, row 1 text
# only and left-padded) and NEW decode steps.
NEW = 6


@pytest.fixture(scope="module")
def std_batch(model, tok):
    return _prompts(model[0], tok, [("what is this lesion?", True), ("scaly plaque", False)], width=24)


@pytest.fixture(scope="module")
def greedy_out(model, tok, std_batch):
    cfg, variables = model
    return sample(cfg, variables, std_batch, temperature=0.0, max_new_tokens=NEW, eos_ids=(),
                  rng=jax.random.key(0), pad_id=tok.pad_id, suppress_ids=vision_ids(cfg))


@pytest.fixture(scope="module")
def next_probs(model, std_batch):
    """float64[2, V]: softmax of the uncached forward's last-position logits."""
    logits = _full_forward(*model, std_batch, np.zeros((2, 0), np.int32))[:, -1].astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def test_cached_greedy_equals_full_forward(model, tok, std_batch, greedy_out):
    cfg, variables = model
    s, out = std_batch["input_ids"].shape[1], greedy_out
    assert out.tokens.shape == (2, NEW) and out.tokens.dtype == np.int32
    np.testing.assert_array_equal(out.lengths, [NEW, NEW])
    logits = _full_forward(cfg, variables, std_batch, out.tokens)[:, s - 1: s - 1 + NEW].copy()
    logits[..., list(vision_ids(cfg))] = -np.inf   # the sampler never emits placeholders
    np.testing.assert_array_equal(out.tokens, logits.argmax(-1))
    expected_lp = np.take_along_axis(jax.nn.log_softmax(logits, -1), out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, expected_lp, atol=2e-4)


def test_decode_across_cache_buckets_equals_full_forward(model, tok, std_batch):
    """Steps in later cache-length buckets (each attending to fewer slots than the cache
    holds) still give the full forward's greedy tokens."""
    cfg, variables = model
    s, new = std_batch["input_ids"].shape[1], 20
    assert len(cache_buckets(s + 1, s + new)) >= 2
    out = sample(cfg, variables, std_batch, temperature=0.0, max_new_tokens=new, eos_ids=(),
                 rng=jax.random.key(0), pad_id=tok.pad_id, suppress_ids=vision_ids(cfg))
    logits = _full_forward(cfg, variables, std_batch, out.tokens)[:, s - 1: s - 1 + new].copy()
    logits[..., list(vision_ids(cfg))] = -np.inf
    np.testing.assert_array_equal(out.tokens, logits.argmax(-1))


def test_cache_buckets_cover_every_step():
    for first, total in ((2, 3), (25, 44), (51, 114), (300, 812), (17, 4096)):
        buckets = cache_buckets(first, total)
        assert buckets[0] >= first and buckets[-1] == total
        assert all(b > a for a, b in zip(buckets, buckets[1:]))
        # a step attends to the smallest bucket above its slot: at most 1.5x the slots it needs
        assert buckets[0] <= max(16, 1.5 * first)
        assert all(b <= 1.5 * a for a, b in zip(buckets, buckets[1:]))


def test_samples_per_prompt_are_grouped_and_eos_stops(model, tok, std_batch, greedy_out):
    cfg, variables = model
    kw = dict(temperature=0.0, max_new_tokens=NEW, rng=jax.random.key(0), pad_id=tok.pad_id,
              suppress_ids=vision_ids(cfg))
    rep = sample(cfg, variables, std_batch, num_samples=3, eos_ids=(), **kw)
    np.testing.assert_array_equal(rep.tokens, np.repeat(greedy_out.tokens, 3, axis=0))
    # Make a later greedy token (at its first occurrence in its row) an EOS: rows stop there.
    r, j = next((r, j) for r in range(2) for j in range(1, NEW)
                if greedy_out.tokens[r, j] not in greedy_out.tokens[r, :j])
    eos = int(greedy_out.tokens[r, j])
    out = sample(cfg, variables, std_batch, eos_ids=(eos, 10**6), **kw)
    for row in range(2):
        first = np.flatnonzero(greedy_out.tokens[row] == eos)
        length = int(first[0]) + 1 if first.size else NEW  # EOS included
        assert out.lengths[row] == length
        np.testing.assert_array_equal(out.tokens[row, :length], greedy_out.tokens[row, :length])
        assert (out.tokens[row, length:] == tok.pad_id).all() and (out.logprobs[row, length:] == 0).all()
    assert out.lengths[r] == j + 1 < NEW


@pytest.fixture(scope="module")
def first_steps(model, tok, std_batch):
    """1000 single-step draws per prompt, per setting, from one compiled program."""
    cfg, variables = model
    kw = dict(num_samples=1000, temperature=1.0, max_new_tokens=1, eos_ids=(), pad_id=tok.pad_id)
    return {name: sample(cfg, variables, std_batch, rng=jax.random.key(seed), **kw, **extra)
            for seed, (name, extra) in enumerate([("plain", dict(top_k=0, top_p=0.999999)),
                                                  ("top_k", dict(top_k=3)),
                                                  ("top_p", dict(top_p=0.6))])}


def test_first_step_distribution_matches_softmax(first_steps, next_probs):
    out, n = first_steps["plain"], 1000
    for row, p in enumerate(next_probs):
        assert p.max() < 0.9  # a genuinely random case
        draws = out.tokens[row * n: (row + 1) * n, 0]
        np.testing.assert_allclose(out.logprobs[row * n: (row + 1) * n, 0], np.log(p[draws]), atol=2e-4)
        # Chi-square over the tokens expected >= 5 times, the rest pooled into one bin.
        counts = np.bincount(draws, minlength=p.size)
        big = p * n >= 5
        assert big.sum() >= 5
        obs = np.append(counts[big], counts[~big].sum())
        exp = np.append(p[big], p[~big].sum()) * n
        assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_top_k_and_top_p_restrict_support(first_steps, next_probs):
    n = 1000
    for row, p in enumerate(next_probs):
        order = np.argsort(-p)
        got = set(first_steps["top_k"].tokens[row * n: (row + 1) * n, 0].tolist())
        assert got == set(order[:3].tolist())
        nucleus = order[: int(np.searchsorted(np.cumsum(p[order]), 0.6)) + 1]
        got = set(first_steps["top_p"].tokens[row * n: (row + 1) * n, 0].tolist())
        assert got <= set(nucleus.tolist()) and len(got) > 1


def test_choose_tokens_frequencies_on_fixed_logits():
    logits = jnp.log(jnp.array([0.05, 0.4, 0.1, 0.3, 0.15]))
    draws = 6000
    batch = jnp.broadcast_to(logits, (draws, 5))
    for top_k, top_p, support in [(0, 1.0, [0, 1, 2, 3, 4]), (2, 1.0, [1, 3]), (0, 0.8, [1, 3, 4]),
                                  (4, 0.5, [1, 3])]:
        ids, lp = choose_tokens(jax.random.key(top_k), batch, 1.0, top_k, top_p)
        freq = np.bincount(np.asarray(ids), minlength=5) / draws
        q = np.zeros(5)
        q[support] = np.exp(np.asarray(logits))[support]
        q /= q.sum()
        assert set(np.flatnonzero(freq)) == set(support)
        assert 0.5 * np.abs(freq - q).sum() < 0.03
        np.testing.assert_allclose(lp, np.asarray(jax.nn.log_softmax(logits))[np.asarray(ids)], atol=1e-6)
    assert np.isneginf(np.asarray(filter_logits(logits, top_k=1))).sum() == 4
    np.testing.assert_array_equal(filter_logits(logits, 0, 1.0), logits)
    ids, lp = choose_tokens(jax.random.key(3), batch, filtered=False)
    freq = np.bincount(np.asarray(ids), minlength=5) / draws
    assert 0.5 * np.abs(freq - np.exp(np.asarray(logits))).sum() < 0.03
    ids, _ = choose_tokens(jax.random.key(0), batch[:3], greedy=True)
    np.testing.assert_array_equal(ids, [1, 1, 1])


def test_draw_categorical_is_exact_and_skips_masked_ids():
    # Masked ids at both ends and in the middle, so the CDF has flat stretches everywhere.
    probs = np.array([0.0, 0.1, 0.0, 0.25, 0.0, 0.6, 0.05, 0.0, 0.0])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    draws = 40000
    ids = np.asarray(draw_categorical(jax.random.key(7), jnp.broadcast_to(logits, (draws, probs.size))))
    assert ids.dtype == np.int32 and set(np.unique(ids)) == set(np.flatnonzero(probs))
    counts = np.bincount(ids, minlength=probs.size)[probs > 0]
    assert stats.chisquare(counts, probs[probs > 0] * draws).pvalue > 1e-3
    # A single finite entry, last in the row: every draw is it (u never reaches the total).
    only_last = jnp.full((64, 5), -jnp.inf).at[:, -1].set(3.0)
    np.testing.assert_array_equal(draw_categorical(jax.random.key(1), only_last), 4)


def test_stop_strings_cut_after_completing_token(model, tok, std_batch, greedy_out):
    cfg, variables = model
    free = greedy_out.tokens[1]
    text = [tok.decode(free[:k]) for k in range(NEW + 1)]
    k = next(k for k in range(2, NEW + 1)
             if len(text[k]) > len(text[k - 1]) >= 1 and text[k].startswith(text[k - 1]))
    stop = text[k][len(text[k - 1]) - 1:]  # spans the boundary between tokens k-1 and k
    assert all(stop not in text[j] for j in range(k))
    out = sample(cfg, variables, std_batch, temperature=0.0, max_new_tokens=NEW, eos_ids=(),
                 rng=jax.random.key(0), pad_id=tok.pad_id, stop_sequences=["\x00never", stop], tokenizer=tok,
                 suppress_ids=vision_ids(cfg))
    assert out.lengths[1] == k
    np.testing.assert_array_equal(out.tokens[1, :k], free[:k])
    assert (out.tokens[1, k:] == tok.pad_id).all() and (out.logprobs[1, k:] == 0).all()


def test_equal_shapes_never_recompile(model, tok, std_batch, greedy_out, first_steps):
    cfg, variables = model
    other = _prompts(cfg, tok, [("elbow lesion", True), ("red", False)], width=24)
    before = trace_count()
    # New prompt contents, rng, temperature, top-k / top-p and EOS values reuse the programs
    # the fixtures compiled.
    sample(cfg, variables, other, num_samples=1000, temperature=0.5, top_k=4, top_p=0.8, max_new_tokens=1,
           eos_ids=(5,), rng=jax.random.key(9), pad_id=tok.pad_id)
    again = sample(cfg, variables, other, temperature=0.0, max_new_tokens=NEW, eos_ids=(),
                   rng=jax.random.key(3), pad_id=tok.pad_id, suppress_ids=vision_ids(cfg))
    assert trace_count() == before
    assert not np.array_equal(again.tokens, greedy_out.tokens)
    sample(cfg, variables, other, temperature=0.0, max_new_tokens=2, eos_ids=(), rng=jax.random.key(3),
           pad_id=tok.pad_id)
    assert trace_count() == before + 1


def test_bad_prompt_batches_are_named(model, tok):
    cfg, variables = model
    batch = _prompts(cfg, tok, [("red", False)])
    right_padded = {**batch, "attention_mask": np.concatenate([batch["attention_mask"][:, 1:], [[0]]], 1)}
    kw = dict(max_new_tokens=2, eos_ids=(), rng=jax.random.key(0), pad_id=tok.pad_id)
    with pytest.raises(ValueError, match="left-padded"):
        sample(cfg, variables, right_padded, **kw)
    with pytest.raises(ValueError, match="position_ids"):
        sample(cfg, variables, {k: v for k, v in batch.items() if k != "position_ids"}, **kw)
    with pytest.raises(ValueError, match="tokenizer"):
        sample(cfg, variables, batch, stop_sequences=["x"], **kw)


def test_greedy_equals_transformers_generate(tmp_path):
    torch = pytest.importorskip("torch")
    from skinr1_jax.model.convert import random_batch, write_random_hf_checkpoint
    from skinr1_jax.model.hf_io import load_hf

    cfg = tiny_config(300)
    hf_model = write_random_hf_checkpoint(cfg, tmp_path, seed=3, scale=0.2)
    cfg, variables = load_hf(tmp_path)
    # Row 0 carries an 8x8-patch image; row 1 is text only and left-padded.
    batch = random_batch(cfg, ((1, 8, 8),), seed=1, batch_size=2)
    new = 12
    with jax.default_matmul_precision("highest"):
        out = sample(cfg, variables, batch, temperature=0.0, max_new_tokens=new, eos_ids=(),
                     rng=jax.random.key(0), pad_id=0)
    ids = torch.as_tensor(batch["input_ids"], dtype=torch.long)
    hf_model.model.rope_deltas = None
    with torch.no_grad():
        ref = hf_model.generate(
            input_ids=ids, attention_mask=torch.as_tensor(batch["attention_mask"], dtype=torch.long),
            mm_token_type_ids=(ids == cfg.image_token_id).to(torch.int32),
            pixel_values=torch.as_tensor(batch["pixel_values"]),
            image_grid_thw=torch.as_tensor(np.asarray(batch["grid_thw"]), dtype=torch.long),
            do_sample=False, max_new_tokens=new, eos_token_id=None, pad_token_id=0)
    ref_new = ref[:, ids.shape[1]:].numpy()
    assert ref_new.shape == (2, new)
    np.testing.assert_array_equal(out.tokens, ref_new)


def test_suppressed_ids_are_never_sampled(model, tok, std_batch, greedy_out):
    cfg, variables = model
    banned = tuple(int(t) for t in np.unique(greedy_out.tokens[:, :2]))
    out = sample(cfg, variables, std_batch, temperature=0.0, max_new_tokens=NEW,
                 rng=jax.random.key(0), pad_id=tok.pad_id, eos_ids=(), suppress_ids=banned)
    assert not np.isin(out.tokens, banned).any()
    assert (out.tokens[:, 0] != greedy_out.tokens[:, 0]).all()
