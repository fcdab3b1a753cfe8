"""Jitted KV-cache sampling: one prefill into a prompt-length cache, then `lax.while_loop`
decode loops (one per cache-length bucket, see `cache_buckets`) with temperature / top-k /
top-p, per-row EOS, and host-side stop strings.

The prefill runs once per prompt; its cache and last logits are then repeated `num_samples`
times (prompt i's samples are rows i*n .. i*n+n-1), so n samples cost one prefill.
One program is compiled per (shapes, cfg, grid_thw, num_samples, max_new_tokens, greedy or
not, filtered or not, pad_id, cache dtype); temperature, top_k, top_p and the EOS ids are
traced values, so changing them does not recompile. `trace_count()` counts traces (= compilations).

On a mesh (`Sampler(..., mesh=mesh)`) the same program runs over the global batch: the
variables are used in the shardings they already have (the train state's, so under LoRA only
the adapter changes between rollouts and nothing is copied), each process passes its block of
prompt rows, the KV cache and the outputs are sharded over the batch axes by their logical
names (train/sharding.py), and each process reads back only its own rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from skinr1_jax.model.config import ModelConfig
from skinr1_jax.model.rope import GridTHW
from skinr1_jax.model.vlm import (forward, init_cache, map_cache, pad_cache,
                                  repeat_cache_rows)

_TRACES = [0]
MAX_EOS_IDS = 8


def trace_count() -> int:
    """How many times the generation program was traced (each trace is one compilation)."""
    return _TRACES[0]


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """tokens int32[B*n, max_new] (pad_id after the end), logprobs f32[B*n, max_new] (0 after
    the end), lengths int32[B*n] (generated tokens, the EOS or stop text included)."""

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray


def filter_logits(logits: jnp.ndarray, top_k: jnp.ndarray | int = 0,
                  top_p: jnp.ndarray | float = 1.0) -> jnp.ndarray:
    """Set logits outside the top-k, then nucleus (top-p), support to -inf, as transformers'
    warpers do.

    logits f32[..., V] (already divided by the temperature); top_k <= 0 keeps all; top_p keeps
    the smallest set of most likely tokens (after top-k) whose mass reaches top_p, the most
    likely one always. Ties at the cut-off stay in. Both may be traced scalars.
    """
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    rank = jnp.arange(logits.shape[-1])
    in_top_k = (rank < top_k) | (top_k <= 0)
    probs = jax.nn.softmax(jnp.where(in_top_k, ordered, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = in_top_k & ((mass_before < top_p) | (rank == 0))
    cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def draw_categorical(rng: jax.Array, logits: jnp.ndarray) -> jnp.ndarray:
    """One id per row from softmax(logits f32[B, V]) (-inf entries never drawn) -> i32[B].

    Inverts the CDF at one uniform per row: the first id whose cumulative mass exceeds
    u * total. Exact in distribution, like `jax.random.categorical`'s Gumbel-max, which draws a
    random number per vocabulary entry: on CPU those [B, V] threefry draws made temperature
    sampling ~2 ms a decode step slower than greedy (batch 64, V 2048), a third of a rollout.
    """
    probs = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    cdf = jnp.cumsum(probs, axis=-1)
    total = cdf[:, -1:]
    # u < total strictly, so some cdf entry exceeds it; the first that does has mass > 0.
    u = jnp.minimum(jax.random.uniform(rng, total.shape) * total, jnp.nextafter(total, 0.0))
    return jnp.sum(cdf <= u, axis=-1).astype(jnp.int32)


def choose_tokens(rng: jax.Array, logits: jnp.ndarray, temperature: jnp.ndarray | float = 1.0,
                  top_k: jnp.ndarray | int = 0, top_p: jnp.ndarray | float = 1.0, *, greedy: bool = False,
                  filtered: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One token per row from logits f32[B, V] -> (ids i32[B], logprobs f32[B]).

    The log-probability is log_softmax(logits / T) of the chosen id, before top-k/top-p
    filtering (what a training forward at temperature T computes); greedy uses T = 1.
    `filtered=False` skips the (sorting) top-k/top-p step.
    """
    logits = logits.astype(jnp.float32)
    if greedy:
        # argmax's first-maximum rule from two plain reductions (XLA:CPU's variadic
        # value-and-index argmax reduce is ~10x slower); the chosen log-prob is then
        # log_softmax at the maximum, -log(sum(exp(logits - max))), with no [B, V] gather.
        top = jnp.max(logits, axis=-1, keepdims=True)
        vocab = logits.shape[-1]
        ids = jnp.min(jnp.where(logits == top, jnp.arange(vocab), vocab), axis=-1)
        return ids.astype(jnp.int32), -jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1))
    scaled = logits / temperature
    logp = jax.nn.log_softmax(scaled, axis=-1)
    ids = draw_categorical(rng, filter_logits(scaled, top_k, top_p) if filtered else scaled)
    chosen = jnp.take_along_axis(logp, ids[:, None], axis=-1)[:, 0]
    return ids.astype(jnp.int32), chosen


def _repeat_rows(x: jnp.ndarray, n: int) -> jnp.ndarray:
    return x if n == 1 else jnp.repeat(x, n, axis=0)


def _constrain(tree: Any, names: tuple[str | None, ...]) -> Any:
    """Shard by logical names when tracing under a mesh (no-op otherwise)."""
    from skinr1_jax.train.sharding import constrain

    return jax.tree.map(lambda x: constrain(x, names), tree)


def _constrain_cache(cache: Any) -> Any:
    from skinr1_jax.train.sharding import constrain

    return map_cache(constrain, cache)


@partial(jax.jit, static_argnames=("cfg", "grid_thw", "num_samples", "max_new_tokens", "greedy",
                                   "filtered", "pad_id", "cache_dtype", "suppress_ids",
                                   "rows_axis"))
def _generate(variables: Any, input_ids: jnp.ndarray, attention_mask: jnp.ndarray,
              position_ids: jnp.ndarray, pixel_values: jnp.ndarray | None,
              rng: jax.Array, temperature: jnp.ndarray, top_k: jnp.ndarray, top_p: jnp.ndarray,
              eos_ids: jnp.ndarray, *, cfg: ModelConfig, grid_thw: GridTHW | None, num_samples: int,
              max_new_tokens: int, greedy: bool, filtered: bool, pad_id: int,
              cache_dtype: str, suppress_ids: tuple[int, ...] = (),
              rows_axis: str | None = "batch"
              ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    _TRACES[0] += 1
    b, s = input_ids.shape
    n, total = num_samples, s + max_new_tokens
    slot_mask = jnp.concatenate(
        [attention_mask.astype(jnp.int32), jnp.ones((b, max_new_tokens), jnp.int32)], axis=1)
    # The prefill's cache holds the prompt's S slots only; the decode loops grow it (below).
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    if pixel_values is not None:
        batch["pixel_values"] = pixel_values
    cache = _constrain_cache(init_cache(cfg, b, s, cache_dtype))
    logits, cache = forward(cfg, variables, batch, grid_thw=grid_thw, cache=cache, cache_index=0,
                            last_logits_only=True)
    cache = _constrain_cache(repeat_cache_rows(cache, n))
    last = _repeat_rows(logits[:, -1], n)  # left padding: the last position is always real
    slot_mask = _repeat_rows(slot_mask, n)
    # The next text position follows the largest prompt position (transformers' rope_deltas
    # are exactly this minus S), so decode positions need nothing beyond position_ids.
    next_pos = _repeat_rows(jnp.max(position_ids, axis=(0, 2)).astype(jnp.int32) + 1, n)
    rows = b * n
    pick = partial(choose_tokens, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                   filtered=filtered)

    def choose(key, logits):
        if suppress_ids:
            logits = logits.at[:, jnp.asarray(suppress_ids)].set(-jnp.inf)
        return pick(key, logits)

    tok, lp = choose(jax.random.fold_in(rng, 0), last)
    tokens = jnp.full((rows, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    logprobs = jnp.zeros((rows, max_new_tokens), jnp.float32).at[:, 0].set(lp)
    done = jnp.isin(tok, eos_ids)
    lengths = jnp.ones((rows,), jnp.int32)

    def cond(state, limit):
        i, _, _, done, _, _ = state
        return (i < max_new_tokens) & ~jnp.all(done) & (s + i - 1 < limit)

    def body(state, limit):
        i, tokens, logprobs, done, lengths, cache = state
        prev = jax.lax.dynamic_slice_in_dim(tokens, i - 1, 1, axis=1)
        slot = s + i - 1
        pos = jnp.broadcast_to((next_pos + i - 1)[None, :, None], (3, rows, 1))
        step_batch = {"input_ids": prev, "attention_mask": slot_mask[:, :limit], "position_ids": pos}
        logits, cache = forward(cfg, variables, step_batch, cache=cache, cache_index=slot)
        cache = _constrain_cache(cache)
        tok, lp = choose(jax.random.fold_in(rng, i), logits[:, -1])
        tok = jnp.where(done, pad_id, tok)
        lp = jnp.where(done, 0.0, lp)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, tok[:, None], i, axis=1)
        logprobs = jax.lax.dynamic_update_slice_in_dim(logprobs, lp[:, None], i, axis=1)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(tok, eos_ids)
        return i + 1, tokens, logprobs, done, lengths, cache

    state = (jnp.int32(1), tokens, logprobs, done, lengths, cache)
    # One loop per cache-length bucket, its cache `limit` slots long (zero-padded once on
    # entry), so a step attends to its bucket's slots rather than all `total`. (Slicing a
    # full-length cache inside the loop instead makes XLA copy the whole cache every step.)
    for limit in cache_buckets(s + 1, total):
        *rest, cache = state
        state = (*rest, _constrain_cache(pad_cache(cache, limit)))
        state = jax.lax.while_loop(partial(cond, limit=limit), partial(body, limit=limit), state)
    _, tokens, logprobs, _, lengths, _ = state
    # Outputs follow the prompts: sharded over the batch axes, or replicated (rows_axis None)
    # when the prompts were, so each process's rows are those of its own prompts.
    return (*_constrain((tokens, logprobs), (rows_axis, "length")),
            _constrain(lengths, (rows_axis,)))


def cache_buckets(first: int, total: int) -> list[int]:
    """Increasing attended lengths for decode steps whose slots run up to `total`, the first
    >= `first` (the first decode step's slot + 1): powers of two and 1.5x powers of two (each
    at most 1.5x the last), then `total`. Each bucket is one more compiled loop; a step
    attends to at most a third more slots than it needs."""
    out, size = [], 16
    while size < total:
        for limit in (size, size * 3 // 2):
            if first <= limit < total:
                out.append(limit)
        size *= 2
    return out + [total]


def _first_stop(tokenizer: Any, ids: np.ndarray, stops: Sequence[str]) -> int | None:
    """Smallest k such that decode(ids[:k]) contains a stop string, or None."""
    if not any(s in tokenizer.decode(ids) for s in stops):
        return None
    lo, hi = 1, len(ids)  # containment grows with the prefix: binary search the first hit
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in tokenizer.decode(ids[:mid]) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return lo


def apply_stop_sequences(out: SampleOutput, stop_sequences: Sequence[str], tokenizer: Any,
                         pad_id: int) -> SampleOutput:
    """Cut each row after the first token that completes a stop string (that token kept)."""
    tokens, logprobs, lengths = out.tokens.copy(), out.logprobs.copy(), out.lengths.copy()
    for r in range(tokens.shape[0]):
        k = _first_stop(tokenizer, tokens[r, : lengths[r]], stop_sequences)
        if k is not None and k < lengths[r]:
            tokens[r, k:] = pad_id
            logprobs[r, k:] = 0.0
            lengths[r] = k
    return SampleOutput(tokens, logprobs, lengths)


class Sampler:
    """The generation program of one model, built once and called every rollout.

    `mesh=None` runs on the default device with host inputs. With a mesh, `variables` must be
    jax Arrays already in their shardings (the train state's, or `place_variables`), and
    `prompt_batch` is this process's block of the global prompt batch (host arrays); the
    output holds this process's rows only. `host_bytes` counts every byte read back to the
    host (the completions of this process's rows; never parameters).
    """

    def __init__(self, cfg: ModelConfig, *, eos_ids: Sequence[int], pad_id: int, mesh: Any = None,
                 suppress_ids: Sequence[int] = (), cache_dtype: str | None = None):
        if len(eos_ids) > MAX_EOS_IDS:
            raise ValueError(f"at most {MAX_EOS_IDS} eos_ids, got {len(eos_ids)}")
        # A fixed-size EOS vector (-1 never matches) so that changing the EOS set never recompiles.
        eos = np.full((MAX_EOS_IDS,), -1, np.int32)
        eos[: len(eos_ids)] = [int(e) for e in eos_ids]
        self.cfg, self.mesh, self.pad_id, self.eos = cfg, mesh, int(pad_id), eos
        self.suppress_ids = tuple(sorted(int(i) for i in suppress_ids))
        self.cache_dtype = cache_dtype or cfg.dtype
        self.host_bytes = 0

    def __call__(self, variables: Any, prompt_batch: Mapping[str, Any], *, num_samples: int = 1,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 max_new_tokens: int, rng: jax.Array,
                 stop_sequences: Sequence[str] | None = None, tokenizer: Any = None
                 ) -> SampleOutput:
        """Generate `num_samples` continuations of each left-padded prompt (see `sample`)."""
        for key in ("input_ids", "attention_mask", "position_ids"):
            if key not in prompt_batch:
                raise ValueError(f"prompt_batch lacks {key!r} (has {sorted(prompt_batch)})")
        if max_new_tokens < 1 or num_samples < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} and num_samples={num_samples} must be >= 1")
        if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
            raise ValueError(f"bad sampling parameters: temperature={temperature}, top_k={top_k}, top_p={top_p}")
        if stop_sequences and tokenizer is None:
            raise ValueError("stop_sequences need a tokenizer to decode the generated ids")
        ids = np.asarray(prompt_batch["input_ids"], np.int32)
        mask = np.asarray(prompt_batch["attention_mask"], np.int32)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
        if not mask[:, -1].all():
            raise ValueError("prompts must be left-padded: attention_mask[:, -1] has zeros in rows "
                             f"{np.flatnonzero(mask[:, -1] == 0).tolist()}")
        arrays = {"input_ids": ids, "attention_mask": mask,
                  "position_ids": np.asarray(prompt_batch["position_ids"], np.int32)}
        if prompt_batch.get("pixel_values") is not None:
            arrays["pixel_values"] = np.asarray(prompt_batch["pixel_values"], np.float32)
        grid = prompt_batch.get("grid_thw")
        grid = (tuple(tuple(int(v) for v in g) for g in np.asarray(grid).reshape(-1, 3))
                if grid is not None else ())
        statics = dict(cfg=self.cfg, num_samples=int(num_samples),
                       max_new_tokens=int(max_new_tokens), greedy=temperature == 0,
                       filtered=top_k > 0 or top_p < 1.0, pad_id=self.pad_id,
                       cache_dtype=self.cache_dtype, suppress_ids=self.suppress_ids)
        # Host (numpy) values go to the jitted program as they are: its C++ dispatch transfers
        # them, where jnp.asarray / jnp.float32 each dispatch an op of their own from Python
        # (~1.3 ms of a 16 ms batch-8 decode call).
        scalars = (rng, np.float32(max(temperature, 1e-6)), np.int32(top_k), np.float32(top_p),
                   self.eos)
        if self.mesh is None:
            outs = _generate(variables, arrays["input_ids"], arrays["attention_mask"],
                             arrays["position_ids"], arrays.get("pixel_values"),
                             *scalars, grid_thw=grid or None, **statics)
            tokens, logprobs, lengths = (np.asarray(x) for x in outs)
        else:
            from skinr1_jax.train import sharding as shd

            count = jax.process_count()
            if count > 1 and len(set(grid)) > 1:
                raise ValueError("several processes need one image grid for every row (fixed "
                                 f"image size); this process has {sorted(set(grid))}")
            placed = shd.shard_batch(arrays, self.mesh)
            replicated = placed["input_ids"].sharding.is_fully_replicated
            with shd.mesh_context(self.mesh):
                outs = _generate(variables, placed["input_ids"], placed["attention_mask"],
                                 placed["position_ids"], placed.get("pixel_values"), *scalars,
                                 grid_thw=(grid * count) or None,
                                 rows_axis=None if replicated else "batch", **statics)
            tokens, logprobs, lengths = (shd.local_rows(x) for x in outs)
        self.host_bytes += tokens.nbytes + logprobs.nbytes + lengths.nbytes
        out = SampleOutput(tokens, logprobs, lengths)
        if stop_sequences:
            out = apply_stop_sequences(out, stop_sequences, tokenizer, self.pad_id)
        return out


def sample(cfg: ModelConfig, variables: Any, prompt_batch: Mapping[str, Any], *, num_samples: int = 1,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, max_new_tokens: int,
           eos_ids: Sequence[int], rng: jax.Array, pad_id: int,
           stop_sequences: Sequence[str] | None = None, tokenizer: Any = None,
           cache_dtype: str | None = None, suppress_ids: Sequence[int] = ()) -> SampleOutput:
    """Generate `num_samples` continuations of each left-padded prompt on the default device
    (a one-off `Sampler` without a mesh).

    prompt_batch: input_ids i32[B, S], attention_mask i32[B, S] (left padding), position_ids
    i32[3, B, S] (from `get_rope_index`; a rope_deltas entry is not needed), optional pixel_values
    f32[N, D] with grid_thw (static tuple of (t, h, w)). temperature 0 = greedy. Rows stop at
    any of `eos_ids` (kept in the length) or, when `stop_sequences` is given (needs
    `tokenizer`), after the token that completes a stop string. `suppress_ids` are never
    sampled (RL and evaluation pass the vision placeholders: a completion holding an image-pad
    token would have no image features to go with it when it is trained on).
    """
    sampler = Sampler(cfg, eos_ids=eos_ids, pad_id=pad_id, suppress_ids=suppress_ids,
                      cache_dtype=cache_dtype)
    return sampler(variables, prompt_batch, num_samples=num_samples, temperature=temperature,
                   top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, rng=rng,
                   stop_sequences=stop_sequences, tokenizer=tokenizer)
