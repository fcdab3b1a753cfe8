"""Advantages and the GRPO loss against a direct numpy transcription of the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skinr1_jax.train import grpo


def np_advantages(r, gid, scale_std=True, eps=1e-4):
    out = np.zeros_like(r, dtype=np.float64)
    for g in np.unique(gid):
        idx = gid == g
        x = r[idx].astype(np.float64)
        if len(x) < 2 or np.all(x == x[0]):
            continue
        dev = x - x.mean()
        out[idx] = dev / (x.std(ddof=1) + eps) if scale_std else dev
    return out


def test_group_ids_assigned_before_repetition():
    np.testing.assert_array_equal(grpo.assign_group_ids(3, 2), [0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="num_generations"):
        grpo.assign_group_ids(3, 1)


@pytest.mark.parametrize("scale_std", [True, False])
def test_advantages_match_numpy_with_constant_groups(scale_std):
    r = np.array([0.0, 1.0, 2.0, 0.5,     # varied
                  1.25, 1.25, 1.25, 1.25,  # all equal (non-trivial value): exactly 0
                  0.1, 0.1, 0.1, 0.1,      # all equal, mean not exact in float
                  2.0, 0.0, 0.0, 0.0], np.float32)
    gid = grpo.assign_group_ids(4, 4)
    adv, share = grpo.group_advantages(jnp.asarray(r), jnp.asarray(gid), scale_std=scale_std)
    adv = np.asarray(adv)
    assert np.all(np.isfinite(adv))
    np.testing.assert_allclose(adv, np_advantages(r, gid, scale_std), rtol=1e-5, atol=1e-6)
    assert np.all(adv[4:12] == 0.0)
    assert float(share) == pytest.approx(0.5)


def test_advantages_of_interleaved_groups():
    r = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 2.0], np.float32)
    gid = np.array([2, 0, 2, 0, 2, 0], np.int32)
    adv, _ = grpo.group_advantages(jnp.asarray(r), jnp.asarray(gid))
    np.testing.assert_allclose(np.asarray(adv), np_advantages(r, gid), rtol=1e-5)


def test_completion_mask_keeps_eos_when_pad_is_eos():
    eos = pad = 7
    comp = np.array([[3, 4, eos, pad, pad],
                     [eos, pad, pad, pad, pad],
                     [1, 2, 3, 4, 5]])
    expect = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(grpo.completion_mask(comp, eos), expect)
    np.testing.assert_array_equal(np.asarray(grpo.completion_mask(jnp.asarray(comp), [eos, 9])),
                                  expect)


def np_grpo(logp, ref, old, mask, adv, beta, cl, ch, agg):
    a = adv[:, None]
    if old is None:
        per = -(1.0 * a)                    # ratio exp(0) = 1
    else:
        r = np.exp(logp - old)
        per = np.maximum(-a * r, -a * np.clip(r, 1 - cl, 1 + ch))
    kl = np.exp(ref - logp) - (ref - logp) - 1
    per = per + beta * kl
    if agg == "seq_mean":
        n = mask.sum(-1)
        return sum((per[i] * mask[i]).sum() / n[i] for i in range(len(n)) if n[i] > 0), (n > 0).sum()
    return (per * mask).sum(), mask.sum()


@pytest.mark.parametrize("agg", ["seq_mean", "token_mean"])
@pytest.mark.parametrize("with_old", [False, True])
def test_grpo_loss_matches_numpy(agg, with_old):
    rng = np.random.default_rng(0)
    b, s = 4, 6
    logp = np.log(rng.uniform(0.05, 0.9, (b, s))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, (b, s))).astype(np.float32)
    old = (logp + rng.normal(0, 0.4, (b, s))).astype(np.float32) if with_old else None
    mask = np.array([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0],
                     [0, 1, 0, 0, 0, 0]], np.float32)
    adv = np.array([1.5, -0.7, 0.3, 0.0], np.float32)
    total, count, metrics = grpo.grpo_loss(
        jnp.asarray(logp), jnp.asarray(mask), jnp.asarray(adv), ref_logprobs=jnp.asarray(ref),
        old_logprobs=None if old is None else jnp.asarray(old), beta=0.04, clip_low=0.2,
        clip_high=0.28, loss_agg=agg)
    e_total, e_count = np_grpo(logp.astype(np.float64), ref, old, mask, adv, 0.04, 0.2, 0.28, agg)
    np.testing.assert_allclose(float(total), e_total, rtol=1e-5)
    assert float(count) == e_count
    kl = np.exp(ref - logp) - (ref - logp) - 1
    np.testing.assert_allclose(float(metrics["kl"]), (kl * mask).sum() / mask.sum(), rtol=1e-5)
    if with_old:
        r = np.exp(logp - old)
        a = adv[:, None]
        clipped = ((a > 0) & (r > 1.28)) | ((a < 0) & (r < 0.8))
        np.testing.assert_allclose(float(metrics["clip_frac"]),
                                   (clipped * mask).sum() / mask.sum(), rtol=1e-6)


def test_on_policy_gradient_is_advantage_weighted_logprob_gradient():
    # ratio == 1 but d loss / d logp = -A / n_tokens per token (seq_mean), beta = 0.
    logp = jnp.log(jnp.array([[0.5, 0.2, 0.4], [0.3, 0.3, 0.6]]))
    mask = jnp.array([[0, 1, 1], [0, 1, 0]], jnp.float32)
    adv = jnp.array([2.0, -1.0])
    g = jax.grad(lambda lp: grpo.grpo_loss(lp, mask, adv, beta=0.0)[0])(logp)
    np.testing.assert_allclose(np.asarray(g), [[0, -1.0, -1.0], [0, 1.0, 0]], rtol=1e-6)
    total, _, _ = grpo.grpo_loss(logp, mask, adv, beta=0.0)
    np.testing.assert_allclose(float(total), -(2.0 - 1.0), rtol=1e-6)


def test_beta_zero_needs_no_reference_and_beta_needs_one():
    lp = jnp.zeros((2, 3))
    m = jnp.ones((2, 3))
    grpo.grpo_loss(lp, m, jnp.zeros(2), beta=0.0)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo.grpo_loss(lp, m, jnp.zeros(2), beta=0.04)


def test_token_mean_denominator_is_global():
    mask = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    assert float(grpo.loss_denominator(mask, "token_mean")) == 7
    assert float(grpo.loss_denominator(mask, "seq_mean")) == 3
    # two micro-batches summed then divided by the global count == one big batch
    rng = np.random.default_rng(3)
    lp = jnp.asarray(np.log(rng.uniform(0.1, 0.9, (4, 4))).astype(np.float32))
    adv = jnp.array([1.0, -1.0, 0.5, 2.0])
    s, c, _ = grpo.grpo_loss(lp, mask, adv, beta=0.0, loss_agg="token_mean")
    s1, _, _ = grpo.grpo_loss(lp[:2], mask[:2], adv[:2], beta=0.0, loss_agg="token_mean")
    s2, _, _ = grpo.grpo_loss(lp[2:], mask[2:], adv[2:], beta=0.0, loss_agg="token_mean")
    np.testing.assert_allclose(float((s1 + s2) / 7), float(s / c), rtol=1e-6)


@pytest.mark.parametrize("agg", ["seq_mean", "token_mean"])
def test_clipped_loss_at_the_sampling_policy_equals_the_on_policy_loss(agg):
    # mu > 1, first update on fresh rollouts: old = logp, ratio 1, nothing clipped, so value
    # and gradient are the mu = 1 loss's.
    rng = np.random.default_rng(1)
    logp = jnp.asarray(np.log(rng.uniform(0.05, 0.9, (4, 5))).astype(np.float32))
    ref = logp + 0.1
    mask = jnp.asarray(np.array([[0, 1, 1, 1, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0],
                                 [0, 1, 1, 1, 1]], np.float32))
    adv = jnp.array([1.0, -0.5, 0.3, -2.0])
    kw = dict(ref_logprobs=ref, beta=0.04, clip_low=0.2, clip_high=0.28, loss_agg=agg)
    on = lambda lp: grpo.grpo_loss(lp, mask, adv, **kw)[0]
    clipped = lambda lp: grpo.grpo_loss(lp, mask, adv, old_logprobs=logp, **kw)[0]
    np.testing.assert_allclose(float(clipped(logp)), float(on(logp)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(clipped)(logp)), np.asarray(jax.grad(on)(logp)),
                               rtol=1e-6, atol=1e-7)
    assert float(grpo.grpo_loss(logp, mask, adv, old_logprobs=logp, **kw)[2]["clip_frac"]) == 0.0


def test_clipped_tokens_get_no_policy_gradient():
    # A > 0 and r above 1 + clip_high (or A < 0 and r below 1 - clip_low): the min picks the
    # constant clipped surrogate, so only the in-range token moves.
    old = jnp.zeros((1, 4))
    logp = jnp.log(jnp.array([[1.0, 1.5, 1.1, 0.5]]))          # r = 1, 1.5, 1.1, 0.5
    mask = jnp.array([[0.0, 1.0, 1.0, 1.0]])
    g_pos = jax.grad(lambda lp: grpo.grpo_loss(lp, mask, jnp.array([1.0]), old_logprobs=old, beta=0.0,
                                               clip_low=0.2, clip_high=0.2, loss_agg="token_mean")[0])(logp)
    np.testing.assert_allclose(np.asarray(g_pos), [[0.0, 0.0, -1.1, -0.5]], rtol=1e-6)
    g_neg = jax.grad(lambda lp: grpo.grpo_loss(lp, mask, jnp.array([-1.0]), old_logprobs=old, beta=0.0,
                                               clip_low=0.2, clip_high=0.2, loss_agg="token_mean")[0])(logp)
    np.testing.assert_allclose(np.asarray(g_neg), [[0.0, 1.5, 1.1, 0.0]], rtol=1e-6)


def test_config_accepts_mu_and_checks_the_clip_range():
    from configs.default import get_config
    from skinr1_jax.config import ConfigError, validate

    c = get_config()
    c.rl.mu = 4
    validate(c)
    c.rl.clip_low = 1.0
    with pytest.raises(ConfigError, match="rl.clip_low"):
        validate(c)
    c.rl.clip_low, c.rl.clip_high = 0.2, -0.1
    with pytest.raises(ConfigError, match="rl.clip_high"):
        validate(c)
    c.rl.clip_high = 0.2
    c.checkpoint.every_steps = 6               # would checkpoint in the middle of a cycle of 4
    with pytest.raises(ConfigError, match="checkpoint.every_steps"):
        validate(c)


def test_config_refuses_no_twin_draws():
    from configs.default import get_config
    from skinr1_jax.config import ConfigError, validate

    c = get_config()
    c.generate.question_variants = 0
    with pytest.raises(ConfigError, match="generate.question_variants"):
        validate(c)
