"""Group-relative advantages and the GRPO policy loss.

Masks and log-probabilities are in input-token coordinates (see losses.py): entry t refers to
token t of the concatenated prompt + completion, predicted by the logits at t - 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ADV_EPS = 1e-4      # the paper's (TRL's) epsilon
LOSS_AGGS = ("seq_mean", "token_mean")


def assign_group_ids(num_prompts: int, num_generations: int) -> np.ndarray:
    """Group ids for prompts repeated contiguously `num_generations` times: the id belongs to
    the prompt and is assigned before repetition, i32[num_prompts * num_generations]."""
    if num_generations < 2:
        raise ValueError(f"rl.num_generations={num_generations}: GRPO needs at least 2 "
                         "completions per prompt")
    return np.repeat(np.arange(num_prompts, dtype=np.int32), num_generations)


def completion_mask(completions: jax.Array | np.ndarray, eos_ids) -> np.ndarray | jax.Array:
    """Mask of completion tokens up to and including the first EOS, i32[B, T].

    Built from the EOS position, not from `tokens != pad`, so the EOS token stays in the loss
    even when the pad id equals the EOS id. A completion with no EOS keeps all T tokens.
    """
    xp = jnp if isinstance(completions, jax.Array) else np
    is_eos = xp.isin(completions, xp.asarray(eos_ids))
    # tokens strictly after the first EOS have at least one EOS before them
    before = xp.cumsum(is_eos, axis=1) - is_eos
    return (before == 0).astype(xp.int32)


def group_advantages(rewards: jax.Array, group_ids: jax.Array, *, scale_std: bool = True,
                     eps: float = ADV_EPS) -> tuple[jax.Array, jax.Array]:
    """(r - mean_group) / (std_group + eps) with the Bessel-corrected std (torch.std).

    `scale_std=False` is Dr. GRPO (no division). Groups whose rewards are all equal, and groups
    of one, get exactly 0. group_ids must lie in [0, B). Returns (advantages f32[B], share of
    groups with a non-zero advantage).
    """
    b = rewards.shape[0]
    r = rewards.astype(jnp.float32)
    seg = lambda x: jax.ops.segment_sum(x, group_ids, num_segments=b)
    count = seg(jnp.ones_like(r))
    mean = seg(r) / jnp.maximum(count, 1.0)
    dev = r - mean[group_ids]
    var = seg(dev * dev) / jnp.maximum(count - 1.0, 1.0)
    std = jnp.sqrt(var)
    varied = (jax.ops.segment_max(r, group_ids, num_segments=b)
              > jax.ops.segment_min(r, group_ids, num_segments=b)) & (count > 1)
    adv = dev / (std[group_ids] + eps) if scale_std else dev
    adv = jnp.where(varied[group_ids], adv, 0.0)
    present = count > 0
    share = jnp.sum(varied & present) / jnp.maximum(jnp.sum(present), 1)
    return adv, share


def loss_denominator(completion_mask: jax.Array, loss_agg: str) -> jax.Array:
    """The global count the loss sum is divided by: non-empty sequences (seq_mean) or tokens
    (token_mean). Computed once over the whole batch, never per micro-batch."""
    mask = completion_mask.astype(jnp.float32)
    if loss_agg == "seq_mean":
        return jnp.sum(jnp.sum(mask, axis=-1) > 0).astype(jnp.float32)
    if loss_agg == "token_mean":
        return jnp.sum(mask)
    raise ValueError(f"rl.loss_agg={loss_agg!r}: expected one of {LOSS_AGGS}")


def grpo_loss(logprobs: jax.Array, completion_mask: jax.Array, advantages: jax.Array, *,
              ref_logprobs: jax.Array | None = None, old_logprobs: jax.Array | None = None,
              beta: float = 0.04, clip_low: float = 0.2, clip_high: float = 0.2,
              loss_agg: str = "seq_mean", entropy: jax.Array | None = None
              ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """GRPO policy loss: (sum, count, metrics); the loss is sum / count.

    Without `old_logprobs` (mu = 1), the paper's single on-policy step: per token
    -(exp(logp - sg(logp)) * A - beta * KL). With them (mu > 1: the sampled tokens' log-probs
    under the policy that sampled them, reused for mu updates), the clipped objective (PPO / TRL / Tunix GRPO)
    max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) + beta * KL, r = exp(logp - old): the
    per-token min of the clipped and unclipped surrogates. With old = logp (the first update on
    fresh rollouts) r = 1, so value and gradient equal the on-policy loss.
    KL is the k3 estimator exp(ref - logp) - (ref - logp) - 1; beta = 0 needs no reference.
    seq_mean: mean over each sequence's tokens then over sequences; token_mean: over tokens.
    metrics are token means over this batch (kl, clip_frac, entropy) plus `tokens`.
    """
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"rl.loss_agg={loss_agg!r}: expected one of {LOSS_AGGS}")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("grpo_loss: beta != 0 needs ref_logprobs")
    mask = completion_mask.astype(jnp.float32)
    adv = advantages.astype(jnp.float32)[:, None]
    if old_logprobs is None:
        ratio = jnp.exp(logprobs - jax.lax.stop_gradient(logprobs))
        per_token = -ratio * adv
        clipped = jnp.zeros_like(per_token)
    else:
        ratio = jnp.exp(jnp.clip(logprobs - old_logprobs, -20.0, 20.0))
        unclipped = -adv * ratio
        per_token = jnp.maximum(unclipped, -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high))
        clipped = (((adv > 0) & (ratio > 1.0 + clip_high))
                   | ((adv < 0) & (ratio < 1.0 - clip_low))).astype(jnp.float32)
    if beta != 0.0:
        d = ref_logprobs - logprobs
        kl = jnp.exp(d) - d - 1.0
        per_token = per_token + beta * kl
    else:
        kl = jnp.zeros_like(per_token)

    tokens = jnp.sum(mask)
    if loss_agg == "seq_mean":
        n = jnp.sum(mask, axis=-1)
        seq = jnp.sum(per_token * mask, axis=-1) / jnp.maximum(n, 1.0)
        total, count = jnp.sum(jnp.where(n > 0, seq, 0.0)), jnp.sum(n > 0).astype(jnp.float32)
    else:
        total, count = jnp.sum(per_token * mask), tokens
    tmean = lambda x: jnp.sum(jax.lax.stop_gradient(x) * mask) / jnp.maximum(tokens, 1.0)
    metrics = {"kl": tmean(kl), "clip_frac": tmean(clipped), "tokens": tokens}
    if entropy is not None:
        metrics["entropy"] = tmean(entropy)
    return total, count, metrics
