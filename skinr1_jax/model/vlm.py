"""Qwen2.5-VL for conditional generation as pure functions over variable pytrees.

    variables = init_variables(cfg, rng)          # {"params": ..., "lora": ...}, boxed with logical axes
    logits, cache = forward(cfg, variables, batch, grid_thw=((1, 8, 8),))

Variables may be boxed (`nn.LogicallyPartitioned`, as `init_variables` returns them) or plain
arrays (`unbox`, `hf_io.load_hf`); `forward` accepts both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from skinr1_jax.model.config import ModelConfig, validate
from skinr1_jax.model.layers import Linear, RMSNorm
from skinr1_jax.model.matmul import mixed_einsum
from skinr1_jax.model.rope import GridTHW, mrope_cos_sin
from skinr1_jax.model.text import Cache, DecoderLayer, rows_at
from skinr1_jax.model.vision import VisionTower

Variables = dict[str, Any]
# Logical axes of each layer's cache arrays. K is stored with the slots last: the decode step's
# Q K^T is then a plain [G, D] x [D, T] product per (row, kv head), which XNNPACK runs ~2x faster
# than the transposed-operand form (measured at T 128 and 416, batch 64) and which is the
# larger of the two attention products at decode.
CACHE_AXES = {"k": ("batch", "kv_heads", "head_dim", "cache_len"),
              "v": ("batch", "kv_heads", "cache_len", "head_dim")}


def _scatter_image_features(embeds: jnp.ndarray, input_ids: jnp.ndarray, image_token_id: int,
                            features: jnp.ndarray) -> jnp.ndarray:
    """Put features[i] at the i-th image token (row-major over [B, S]), like masked_scatter."""
    is_image = input_ids == image_token_id
    flat = is_image.reshape(-1)
    idx = jnp.clip(jnp.cumsum(flat) - 1, 0, features.shape[0] - 1)
    gathered = features[idx].reshape(embeds.shape).astype(embeds.dtype)
    return jnp.where(is_image[..., None], gathered, embeds)


class LanguageModel(nn.Module):
    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, input_ids: jnp.ndarray, image_features: jnp.ndarray | None,
                 position_ids: jnp.ndarray, mask: jnp.ndarray, cache: Cache | None,
                 cache_index: jnp.ndarray | None, out_positions: jnp.ndarray | None = None
                 ) -> tuple[jnp.ndarray, jnp.ndarray, Cache | None]:
        """Final hidden states [B, S, D], or [B, K, D] at `out_positions` i32[B, K]. With K < S
        the last layer computes its queries, MLP and norm there only (its keys and values, which
        the kept positions attend to, still for all S), the same values for ~K/S of its work;
        with K >= S it runs whole (keeping blocked causal attention) and the rows are picked."""
        c, t = self.cfg, self.cfg.text
        table = self.param("embed_tokens", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vocab", "embed")), (t.vocab_size, t.hidden_size),
            jnp.dtype(c.param_dtype))
        x = table.astype(c.dtype)[input_ids]
        if image_features is not None:
            x = _scatter_image_features(x, input_ids, c.image_token_id, image_features)
        cos, sin = mrope_cos_sin(position_ids, t.head_dim, t.rope_theta, t.mrope_section)
        layer_cls = nn.remat(DecoderLayer) if c.remat else DecoderLayer
        prune = out_positions is not None and out_positions.shape[1] < input_ids.shape[1]
        last = t.num_hidden_layers - 1 if prune else None
        for i in range(t.num_hidden_layers):
            x, cache = layer_cls(c, i, self.deterministic, name=f"layers_{i}")(
                x, cos, sin, mask, cache, cache_index, out_positions if i == last else None)
        x = RMSNorm(t.rms_norm_eps, "embed", c.dtype, c.param_dtype, name="norm")(x)
        if out_positions is not None and not prune:
            x = rows_at(x, out_positions)
        return x, table, cache


class Qwen2_5_VL(nn.Module):
    cfg: ModelConfig
    deterministic: bool = True
    last_logits_only: bool = False  # logits of the last position only: [B, 1, V]

    @nn.compact
    def __call__(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray | None,
                 position_ids: jnp.ndarray, pixel_values: jnp.ndarray | None,
                 grid_thw: GridTHW | None, cache: Cache | None, cache_index: jnp.ndarray | None,
                 logit_positions: jnp.ndarray | None = None) -> tuple[jnp.ndarray, Cache | None]:
        c = self.cfg
        b, s = input_ids.shape
        features = None
        if pixel_values is not None:
            if not grid_thw:
                raise ValueError("pixel_values given without grid_thw")
            features = VisionTower(c, self.deterministic, name="visual")(pixel_values, grid_thw)
        mask = _attention_mask(b, s, attention_mask, cache, cache_index)
        if self.last_logits_only:
            logit_positions = jnp.full((b, 1), s - 1, jnp.int32)
        h, table, cache = LanguageModel(c, self.deterministic, name="language_model")(
            input_ids, features, position_ids, mask, cache, cache_index, logit_positions)
        if c.text.tie_word_embeddings:
            logits = mixed_einsum("bsd,vd->bsv", h, table, c.product_dtype)
        else:
            logits = Linear(c.text.vocab_size, ("embed", "vocab"), "lm_head", use_bias=False,
                            lora=c.lora, deterministic=self.deterministic, dtype=c.dtype,
                            param_dtype=c.param_dtype, out_dtype="float32",
                            matmul_dtype=c.matmul_dtype, name="lm_head")(h)
        return logits.astype(jnp.float32), cache


def _attention_mask(b: int, s: int, attention_mask: jnp.ndarray | None, cache: Cache | None,
                    cache_index: jnp.ndarray | None) -> jnp.ndarray:
    """bool[B, S, T]: causal by slot index and key padding. Without a cache the S tokens are
    slots 0..S-1; with one, they are slots cache_index..cache_index+S-1 of T cache slots."""
    if cache is None:
        t, start = s, 0
    else:
        if cache_index is None:
            raise ValueError("forward with a cache needs cache_index (the slot of the first new token)")
        t, start = cache_length(cache), cache_index
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    if attention_mask.shape != (b, t):
        what = f"the cache length {t}" if cache is not None else f"the sequence length {s}"
        raise ValueError(f"attention_mask shape {attention_mask.shape} must be {(b, t)} ({what})")
    causal = jnp.arange(t)[None, :] <= (start + jnp.arange(s))[:, None]
    return causal[None] & (attention_mask[:, None, :] != 0)


def forward(cfg: ModelConfig, variables: Variables, batch: dict[str, Any], *,
            grid_thw: GridTHW | None = None, cache: Cache | None = None,
            cache_index: jnp.ndarray | int | None = None, deterministic: bool = True,
            rngs: dict[str, jax.Array] | None = None, last_logits_only: bool = False
            ) -> tuple[jnp.ndarray, Cache | None]:
    """Logits f32[B, S, V] (f32[B, 1, V] of the last position with `last_logits_only`: a
    prefill needs no more, and the vocabulary projection of every prompt token is its
    largest matmul; f32[B, K, V] at the positions of `logit_positions` i32[B, K] when the batch
    has it) for batch {input_ids i32[B,S], attention_mask i32[B,S] ([B,T] with a
    cache), position_ids i32[3,B,S], pixel_values f32[N, C*Tp*P*P] (optional)} and the updated
    cache. `grid_thw` is static: (t, h, w) per image in order of appearance. Jitted inside
    (one compilation per cfg / grid_thw / shapes); also fine to call under an outer jit."""
    input_ids = jnp.asarray(batch["input_ids"], jnp.int32)
    position_ids = batch.get("position_ids")
    if position_ids is None:
        raise ValueError("batch needs position_ids i32[3, B, S] (see get_rope_index)")
    position_ids = jnp.asarray(position_ids, jnp.int32)
    if position_ids.shape != (3, *input_ids.shape):
        raise ValueError(f"position_ids shape {position_ids.shape} must be {(3, *input_ids.shape)}")
    attention_mask = batch.get("attention_mask")
    if attention_mask is not None:
        attention_mask = jnp.asarray(attention_mask)
    pixel_values = batch.get("pixel_values")
    grid_thw = tuple(tuple(int(d) for d in g) for g in grid_thw) if grid_thw else None
    if pixel_values is not None:
        pixel_values = jnp.asarray(pixel_values)
        _check_image_tokens(cfg, batch["input_ids"], grid_thw)
    if cache_index is not None:
        cache_index = jnp.asarray(cache_index, jnp.int32)
    logit_positions = batch.get("logit_positions")
    if logit_positions is not None:
        logit_positions = jnp.asarray(logit_positions, jnp.int32)
    return _apply(cfg, dict(variables), input_ids, attention_mask, position_ids, pixel_values,
                  cache, cache_index, rngs or {}, logit_positions, grid_thw=grid_thw,
                  deterministic=deterministic,
                  last_logits_only=last_logits_only)


def forward_grouped(cfg: ModelConfig, variables: Variables, batch: dict[str, Any], *,
                    groups: int, prompt_len: int, grid_thw: GridTHW | None = None,
                    deterministic: bool = True, rngs: dict[str, jax.Array] | None = None
                    ) -> jnp.ndarray:
    """Logits f32[B, S - P, V] at positions P-1 .. S-2 (those predicting tokens P .. S-1) of a
    batch whose rows come in `groups` consecutive copies of each prompt: rows i*G .. i*G+G-1
    share input_ids[:, :P], their positions and their image (an RL batch of G completions per
    prompt, P = `prompt_len`). Each prompt (and its image) runs once, into a KV cache the G
    completions of its group then attend to: the same logits as `forward` at those positions,
    for about 1/G of the prompt's work (prompt and image are half an RL row or more).
    `grid_thw` lists every row's image, as for `forward`."""
    ids = jnp.asarray(batch["input_ids"], jnp.int32)
    rows, s = ids.shape
    g, p = int(groups), int(prompt_len)
    if g < 1 or rows % g or not 0 < p < s:
        raise ValueError(f"forward_grouped: {rows} rows in groups of {g}, prompt length {p} of {s}")
    mask = jnp.asarray(batch["attention_mask"], jnp.int32)
    pos = jnp.asarray(batch["position_ids"], jnp.int32)
    prompt = {"input_ids": ids[::g, :p], "attention_mask": mask[::g, :p],
              "position_ids": pos[:, ::g, :p]}
    grid = None
    if batch.get("pixel_values") is not None:
        pixels = jnp.asarray(batch["pixel_values"])
        prompt["pixel_values"] = pixels.reshape(rows, -1, pixels.shape[-1])[::g].reshape(
            -1, pixels.shape[-1])
        grid = tuple(grid_thw)[::g]
    cache = init_cache(cfg, rows // g, p)
    first, cache = forward(cfg, variables, prompt, grid_thw=grid, cache=cache, cache_index=0,
                           deterministic=deterministic, rngs=rngs, last_logits_only=True)
    first = jnp.repeat(first, g, axis=0)
    if s - 1 == p:
        return first
    # The group's copies of the prompt cache, with room for the completion tokens P .. S-2.
    cache = pad_cache(repeat_cache_rows(cache, g), s - 1)
    rest = {"input_ids": ids[:, p:s - 1], "attention_mask": mask[:, :s - 1],
            "position_ids": pos[:, :, p:s - 1]}
    later, _ = forward(cfg, variables, rest, cache=cache, cache_index=p,
                       deterministic=deterministic, rngs=rngs)
    return jnp.concatenate([first, later], axis=1)


def _check_image_tokens(cfg: ModelConfig, input_ids: Any, grid_thw: GridTHW | None) -> None:
    """Host-side check (skipped under tracing) that image tokens and image features agree."""
    if not grid_thw:
        raise ValueError("pixel_values given without grid_thw")
    if isinstance(input_ids, jax.core.Tracer):
        return
    found = int((np.asarray(input_ids) == cfg.image_token_id).sum())
    want = sum(t * h * w for t, h, w in grid_thw) // cfg.vision.spatial_merge_size ** 2
    if found != want:
        raise ValueError(f"input_ids hold {found} image tokens (id {cfg.image_token_id}) but "
                         f"grid_thw {grid_thw} gives {want} image features")


@functools.partial(jax.jit, static_argnames=("cfg", "grid_thw", "deterministic", "last_logits_only"))
def _apply(cfg: ModelConfig, variables: Variables, input_ids: jnp.ndarray,
           attention_mask: jnp.ndarray | None, position_ids: jnp.ndarray,
           pixel_values: jnp.ndarray | None, cache: Cache | None, cache_index: jnp.ndarray | None,
           rngs: dict[str, jax.Array], logit_positions: jnp.ndarray | None, *,
           grid_thw: GridTHW | None, deterministic: bool,
           last_logits_only: bool) -> tuple[jnp.ndarray, Cache | None]:
    return Qwen2_5_VL(cfg, deterministic, last_logits_only).apply(
        variables, input_ids, attention_mask, position_ids, pixel_values, grid_thw, cache,
        cache_index, logit_positions, rngs=rngs)


def init_variables(cfg: ModelConfig, rng: jax.Array) -> Variables:
    """Random {"params": ..., "lora": ...} (lora only when cfg.lora.rank > 0), every leaf an
    `nn.LogicallyPartitioned` carrying its logical axis names."""
    validate(cfg)
    m = cfg.vision.spatial_merge_size
    grid = ((1, m, m),)
    ids = np.array([[cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id]], np.int32)
    pixels = jnp.zeros((m * m, cfg.vision.patch_dim), jnp.float32)
    positions = jnp.zeros((3, 1, 3), jnp.int32)
    model = Qwen2_5_VL(cfg, True)

    @jax.jit
    def init(key: jax.Array) -> Variables:
        return model.init({"params": key}, jnp.asarray(ids), None, positions, pixels, grid, None, None)

    return dict(init(rng))


@functools.lru_cache(maxsize=16)
def abstract_variables(cfg: ModelConfig) -> Variables:
    """init_variables' tree of boxed jax.ShapeDtypeStruct (no memory, no compute)."""
    return jax.eval_shape(lambda k: init_variables(cfg, k), jax.random.key(0))


def logical_axes(variables: Variables | ModelConfig) -> Any:
    """Pytree of `PartitionSpec`s of logical axis names, matching `unbox(variables)`. Pass boxed
    variables (init_variables / abstract_variables) or a ModelConfig."""
    if isinstance(variables, ModelConfig):
        variables = abstract_variables(variables)
    return nn.get_partition_spec(variables)


def unbox(variables: Variables) -> Variables:
    """Plain arrays (drops the logical-axis boxes)."""
    return nn.meta.unbox(variables)


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype: Any = None) -> Cache:
    """Zeroed KV cache {"k", "v"}: per layer one k [B, kv_heads, head_dim, max_len] and one
    v [B, kv_heads, max_len, head_dim] array (logical axes CACHE_AXES), dtype defaulting to
    the compute dtype."""
    t = cfg.text
    sizes = {"batch": batch_size, "kv_heads": t.num_key_value_heads, "head_dim": t.head_dim,
             "cache_len": max_len}
    dtype = jnp.dtype(dtype or cfg.dtype)
    return {name: tuple(jnp.zeros(tuple(sizes[a] for a in axes), dtype)
                        for _ in range(t.num_hidden_layers))
            for name, axes in CACHE_AXES.items()}


def map_cache(fn: Callable[[jnp.ndarray, tuple[str, ...]], jnp.ndarray], cache: Cache) -> Cache:
    """fn(array, its logical axes) applied to every layer's k and v array."""
    return {name: tuple(fn(x, CACHE_AXES[name]) for x in layers) for name, layers in cache.items()}


def cache_length(cache: Cache) -> int:
    """Slots per row of a cache."""
    return cache["k"][0].shape[CACHE_AXES["k"].index("cache_len")]


def pad_cache(cache: Cache, length: int) -> Cache:
    """The cache with zeroed slots appended up to `length` slots per row."""
    def pad(x: jnp.ndarray, axes: tuple[str, ...]) -> jnp.ndarray:
        widths = [(0, 0)] * x.ndim
        widths[axes.index("cache_len")] = (0, length - x.shape[axes.index("cache_len")])
        return jnp.pad(x, widths)
    return map_cache(pad, cache)


def repeat_cache_rows(cache: Cache, n: int) -> Cache:
    """Each row's cache repeated n times in place (rows i*n .. i*n+n-1 copy row i)."""
    if n == 1:
        return cache
    return map_cache(lambda x, axes: jnp.repeat(x, n, axis=axes.index("batch")), cache)
