"""The Qwen2 language model of Qwen2.5-VL: grouped-query attention with q/k/v biases and
multimodal rotary embeddings, SwiGLU MLP, RMSNorm, and an optional preallocated KV cache
(per layer one k [B, kv_heads, head_dim, T] and one v [B, kv_heads, T, head_dim] array,
written at slot `cache_index`; vlm.CACHE_AXES).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from skinr1_jax.model.config import ModelConfig
from skinr1_jax.model.layers import GatedMLP, Linear, RMSNorm, attention
from skinr1_jax.model.rope import apply_rotary

Cache = dict[str, tuple[jnp.ndarray, ...]]


def rows_at(x: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
    """x[b, positions[b]] for x [B, S, ...] and positions i32[B, K]: [B, K, ...]."""
    idx = positions.reshape(positions.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _linear_kw(cfg: ModelConfig, deterministic: bool) -> dict:
    return dict(lora=cfg.lora, deterministic=deterministic, dtype=cfg.dtype,
                param_dtype=cfg.param_dtype, matmul_dtype=cfg.matmul_dtype)


class SelfAttention(nn.Module):
    cfg: ModelConfig
    index: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, mask: jnp.ndarray,
                 cache: Cache | None, cache_index: jnp.ndarray | None,
                 queries: jnp.ndarray | None = None) -> tuple[jnp.ndarray, Cache | None]:
        """Keys and values of all S tokens; queries at all of them, or with `queries`
        i32[B, K] at those K positions only (output [B, K, D])."""
        t = self.cfg.text
        prefix = f"model.language_model.layers.{self.index}.self_attn"
        kw = _linear_kw(self.cfg, self.deterministic)
        b, s, _ = x.shape
        hd, nh, nkv = t.head_dim, t.num_attention_heads, t.num_key_value_heads
        xq, cos_q, sin_q = x, cos, sin
        if queries is not None:
            xq, cos_q, sin_q, mask = (rows_at(a, queries) for a in (x, cos, sin, mask))
        q = Linear(nh * hd, ("embed", "heads"), f"{prefix}.q_proj", name="q_proj", **kw)(xq)
        k = Linear(nkv * hd, ("embed", "kv_heads"), f"{prefix}.k_proj", name="k_proj", **kw)(x)
        v = Linear(nkv * hd, ("embed", "kv_heads"), f"{prefix}.v_proj", name="v_proj", **kw)(x)
        q = apply_rotary(q.reshape(b, xq.shape[1], nh, hd), cos_q, sin_q)
        # Heads-major [B, KV, S, D]: what attention multiplies (the cache keeps k transposed).
        k = apply_rotary(k.reshape(b, s, nkv, hd), cos, sin).transpose(0, 2, 1, 3)
        v = v.reshape(b, s, nkv, hd).transpose(0, 2, 1, 3)
        keys_last = cache is not None
        if cache is not None:
            # One array per layer: attention reads the updated buffer in place, where a slice
            # of a [layers, ...] array would be copied every decode step. K is stored slots-last.
            i = self.index
            new = {"k": (k.transpose(0, 1, 3, 2), (0, 0, 0, cache_index)),
                   "v": (v, (0, 0, cache_index, 0))}
            cache = {name: (*layers[:i], jax.lax.dynamic_update_slice(
                layers[i], new[name][0].astype(layers[i].dtype), new[name][1]), *layers[i + 1:])
                for name, layers in cache.items()}
            k = cache["k"][i].astype(q.dtype)
            v = cache["v"][i].astype(q.dtype)
        # Without a cache the mask is causal over the S tokens themselves: blocked attention.
        out = attention(q, k, v, mask, hd ** -0.5, causal=cache is None and queries is None,
                        keys_last=keys_last, matmul_dtype=self.cfg.matmul_dtype
                        ).reshape(b, q.shape[1], nh * hd)
        out = Linear(t.hidden_size, ("heads", "embed"), f"{prefix}.o_proj", use_bias=False,
                     name="o_proj", **kw)(out)
        return out, cache


class DecoderLayer(nn.Module):
    cfg: ModelConfig
    index: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, mask: jnp.ndarray,
                 cache: Cache | None, cache_index: jnp.ndarray | None,
                 queries: jnp.ndarray | None = None) -> tuple[jnp.ndarray, Cache | None]:
        """x [B, S, D]; cos/sin f32[B, S, head_dim]; mask bool[B, S, T] (T = S without a cache,
        the cache length with one). With `queries` i32[B, K] only those positions' outputs
        [B, K, D] are computed (the cache still gets every token's keys and values): the last
        layer's, when only some positions' logits are wanted."""
        c, t = self.cfg, self.cfg.text
        norm = dict(eps=t.rms_norm_eps, axis_name="embed", dtype=c.dtype, param_dtype=c.param_dtype)
        h = RMSNorm(**norm, name="input_layernorm")(x)
        h, cache = SelfAttention(c, self.index, self.deterministic, name="self_attn")(
            h, cos, sin, mask, cache, cache_index, queries)
        x = (x if queries is None else rows_at(x, queries)) + h
        mlp = GatedMLP(t.hidden_size, t.intermediate_size, ("embed", "mlp"),
                       f"model.language_model.layers.{self.index}.mlp", False, name="mlp",
                       **_linear_kw(c, self.deterministic))
        x = x + mlp(RMSNorm(**norm, name="post_attention_layernorm")(x))
        return x, cache
