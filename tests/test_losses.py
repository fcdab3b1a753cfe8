"""SFT loss and per-token log-probs against a direct numpy transcription."""

import jax.numpy as jnp
import numpy as np
import pytest

from skinr1_jax.train import losses


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_sft_loss_matches_numpy_and_ignores_non_assistant_tokens():
    rng = np.random.default_rng(0)
    b, s, v = 3, 7, 11
    logits = rng.normal(size=(b, s, v)).astype(np.float32)
    ids = rng.integers(0, v, size=(b, s))
    mask = np.zeros((b, s), np.int32)
    mask[0, 3:] = 1
    mask[1, 5:6] = 1
    mask[2, 0] = 1   # position 0 has no predicting logit: never a target
    total, count = losses.sft_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask))
    lp = np_log_softmax(logits.astype(np.float64))
    expect, n = 0.0, 0
    for i in range(b):
        for t in range(1, s):
            if mask[i, t]:
                expect -= lp[i, t - 1, ids[i, t]]
                n += 1
    assert float(count) == n == 5
    np.testing.assert_allclose(float(total), expect, rtol=1e-5)
    # tokens outside the mask do not change the loss
    logits2 = logits.copy()
    logits2[1, :4] += 5.0
    total2, _ = losses.sft_loss(jnp.asarray(logits2), jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(float(total2), float(total), rtol=1e-6)


def test_sum_count_accumulate_exactly():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(4, 6, 5)).astype(np.float32))
    ids = jnp.asarray(rng.integers(0, 5, size=(4, 6)))
    mask = jnp.asarray((rng.random((4, 6)) > 0.4).astype(np.int32))
    s, c = losses.sft_loss(logits, ids, mask)
    s1, c1 = losses.sft_loss(logits[:2], ids[:2], mask[:2])
    s2, c2 = losses.sft_loss(logits[2:], ids[2:], mask[2:])
    np.testing.assert_allclose(float((s1 + s2) / (c1 + c2)), float(s / c), rtol=1e-6)


def test_token_logprobs_temperature_and_entropy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    ids = rng.integers(0, 7, size=(2, 5))
    t = 0.7
    lp = np.asarray(losses.token_logprobs(jnp.asarray(logits), jnp.asarray(ids), t))
    ref = np_log_softmax(logits.astype(np.float64) / t)
    assert lp.shape == (2, 5) and np.all(lp[:, 0] == 0)
    for i in range(2):
        for k in range(1, 5):
            np.testing.assert_allclose(lp[i, k], ref[i, k - 1, ids[i, k]], rtol=1e-5)
    ent = np.asarray(losses.token_entropy(jnp.asarray(logits), t))
    np.testing.assert_allclose(ent[:, 1:], -(np.exp(ref) * ref).sum(-1)[:, :-1], rtol=1e-5)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="loss_mask"):
        losses.sft_loss(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4), jnp.int32),
                        jnp.zeros((2, 5), jnp.int32))
