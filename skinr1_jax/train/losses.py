"""Supervised loss. Every loss here returns (sum, count) so accumulation over micro-batches
and devices is exact; the caller divides by the global count.

Alignment convention (shared with grpo.py): masks live in *input-token coordinates*. For
`input_ids[b, t]`, `mask[b, t] = 1` means "token t is a target"; it is predicted by the logits at
position t - 1. Position 0 is never a target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, input_ids: jax.Array, temperature: float = 1.0
                   ) -> jax.Array:
    """log p(input_ids[t] | input_ids[<t]) at `temperature`, f32[B, S] with 0 at t = 0."""
    # Shift the ids, not the logits: logits[:, :-1] copies the largest activation (and its
    # gradient is padded back); the last position's dummy target is dropped from [B, S].
    logits = logits.astype(jnp.float32) / temperature
    targets = jnp.pad(input_ids[:, 1:], ((0, 0), (0, 1)))
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.pad((picked - logz)[:, :-1], ((0, 0), (1, 0)))


def token_entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Entropy of the next-token distribution at `temperature`, f32[B, S] aligned like
    `token_logprobs` (entry t is the entropy of the distribution that predicted token t)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.pad(ent[:, :-1], ((0, 0), (1, 0)))


def _logprobs_at(logits: jax.Array, input_ids: jax.Array, positions: jax.Array, caller: str
                 ) -> jax.Array:
    """log p(input_ids[b, positions[b, k]]) f32[B, K] from `logits` f32[B, K, V] (already
    scaled) computed only at `positions - 1`."""
    if logits.shape[:2] != positions.shape or positions.shape[0] != input_ids.shape[0]:
        raise ValueError(f"{caller}: logits {logits.shape}, positions {positions.shape}, "
                         f"input_ids {input_ids.shape} disagree")
    targets = jnp.take_along_axis(input_ids, positions, axis=1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def completion_logprobs(logits: jax.Array, input_ids: jax.Array, positions: jax.Array,
                        temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """`token_logprobs` and `token_entropy` when `logits` f32[B, K, V] were computed only at
    `positions - 1`, for positions i32[B, K] (each >= 1, distinct within a row): both f32[B, S],
    0 outside the positions. The entropy is of the stopped-gradient logits (a metric)."""
    logits = logits.astype(jnp.float32) / temperature
    logp = _logprobs_at(logits, input_ids, positions, "completion_logprobs")
    logq = jax.nn.log_softmax(jax.lax.stop_gradient(logits), axis=-1)
    ent = -jnp.sum(jnp.exp(logq) * logq, axis=-1)
    rows = jnp.arange(positions.shape[0])[:, None]
    full = jnp.zeros((positions.shape[0], input_ids.shape[1]), jnp.float32)
    return full.at[rows, positions].set(logp), full.at[rows, positions].set(ent)


def sft_loss(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    """Token-level cross-entropy over target tokens (assistant turn): (sum, count)."""
    if logits.shape[:2] != input_ids.shape or loss_mask.shape != input_ids.shape:
        raise ValueError(f"sft_loss: logits {logits.shape}, input_ids {input_ids.shape}, "
                         f"loss_mask {loss_mask.shape} disagree on [B, S]")
    mask = loss_mask.astype(jnp.float32).at[:, 0].set(0.0)
    nll = -token_logprobs(logits, input_ids)
    return jnp.sum(nll * mask), jnp.sum(mask)


def sft_loss_at(logits: jax.Array, input_ids: jax.Array, positions: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """sft_loss when `logits` f32[B, K, V] were computed only at `positions - 1`, for the target
    positions i32[B, K] of `data.pipeline.target_positions` (0 pads: never a target)."""
    nll = -_logprobs_at(logits.astype(jnp.float32), input_ids, positions, "sft_loss_at")
    mask = (positions > 0).astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)
