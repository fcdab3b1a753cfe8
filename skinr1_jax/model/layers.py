"""Shared building blocks: RMSNorm, a Linear with an optional PEFT-style LoRA branch, the gated
SiLU MLP, and masked softmax attention.

Logical axis names of every parameter (the training code maps them onto the mesh):

| parameter                                | axes                                  |
|------------------------------------------|---------------------------------------|
| language_model.embed_tokens.embedding    | ("vocab", "embed")                    |
| lm_head.kernel                           | ("embed", "vocab")                    |
| self_attn.q_proj kernel / bias           | ("embed", "heads") / ("heads",)       |
| self_attn.k_proj, v_proj kernel / bias   | ("embed", "kv_heads") / ("kv_heads",) |
| self_attn.o_proj kernel                  | ("heads", "embed")                    |
| mlp.gate_proj, up_proj / down_proj       | ("embed", "mlp") / ("mlp", "embed")   |
| text norms                               | ("embed",)                            |
| visual.patch_embed.kernel                | ("vision_patch", "vision_embed")      |
| blocks.attn.qkv kernel / bias            | ("vision_embed", "vision_qkv") / ("vision_qkv",) |
| blocks.attn.proj kernel / bias           | ("vision_heads", "vision_embed") / ("vision_embed",) |
| blocks.mlp gate/up / down                | ("vision_embed", "vision_mlp") / ("vision_mlp", "vision_embed") |
| vision norms, merger.ln_q                | ("vision_embed",)                     |
| merger.mlp_0 kernel / bias               | ("vision_merge_in", "vision_merge") / ("vision_merge",) |
| merger.mlp_2 kernel / bias               | ("vision_merge", "embed") / ("embed",) |
| LoRA lora_a / lora_b (collection "lora") | (in_axis, "lora_rank") / ("lora_rank", out_axis) |

Fused head projections keep heads and head_dim in one axis so a "heads" -> tensor rule shards
whole heads whenever the mesh axis divides the head count.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from skinr1_jax.model.config import LoraConfig
from skinr1_jax.model.matmul import mixed_einsum

NEG_INF = -1e30  # finite so fully masked (padding) rows stay NaN-free


def _dt(name: str) -> jnp.dtype:
    return jnp.dtype(name)


class RMSNorm(nn.Module):
    eps: float
    axis_name: str
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), _dt(self.param_dtype))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # Scaled in float32, rounded once: a low-precision product would make the scale's
        # gradient a low-precision sum over every token (slow on XLA:CPU, and rounded).
        return (scale.astype(jnp.float32) * x32).astype(_dt(self.dtype))


def lora_a_init(key: jax.Array, shape: tuple[int, int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """A stored [in, r]; PEFT's kaiming_uniform_(a=sqrt(5)) on its [r, in] weight is
    U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class Linear(nn.Module):
    """y = x W + b (+ dropout(x) A B * alpha / r when `module_name` is a LoRA target).

    `module_name` is the transformers 5 module path (e.g. "model.language_model.layers.0.mlp.up_proj"),
    used for LoRA targeting and the HF / PEFT key maps.
    """

    features: int
    axes: tuple[str, str]
    module_name: str
    use_bias: bool = True
    lora: LoraConfig = LoraConfig()
    deterministic: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    out_dtype: str | None = None  # e.g. float32 logits from bf16 inputs (f32 accumulation)
    matmul_dtype: str | None = None  # operand dtype of the products (None: dtype)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        dtype, pdtype = _dt(self.dtype), _dt(self.param_dtype)
        mdtype = _dt(self.matmul_dtype or self.dtype)
        in_features = x.shape[-1]
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), self.axes), (in_features, self.features), pdtype)
        # Matmuls on 2-D [tokens, features]: XLA:CPU's gradient of the 3-D form is ~3x slower.
        lead = x.shape[:-1]
        x = x.astype(dtype).reshape(-1, in_features)
        y = mixed_einsum("ti,io->to", x, kernel, mdtype)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[1],)),
                              (self.features,), pdtype)
            y = y + bias.astype(y.dtype)
        if self.lora.targets(self.module_name):
            r = self.lora.rank
            a = self.variable("lora", "lora_a", lambda: nn.with_logical_partitioning(
                lora_a_init, (self.axes[0], "lora_rank"))(
                    self.make_rng("params"), (in_features, r), pdtype))
            b = self.variable("lora", "lora_b", lambda: nn.with_logical_partitioning(
                nn.initializers.zeros, ("lora_rank", self.axes[1]))(
                    self.make_rng("params"), (r, self.features), pdtype))
            h = nn.Dropout(self.lora.dropout)(x, deterministic=self.deterministic)
            down = mixed_einsum("ti,ir->tr", h, a.value, mdtype).astype(dtype)
            y = y + mixed_einsum("tr,ro->to", down, b.value, mdtype) * self.lora.scaling
        return y.astype(_dt(self.out_dtype or self.dtype)).reshape(*lead, self.features)


# Query rows per block of causal attention (see `attention`): at least four blocks, of 32 to
# 128 rows. With n blocks the products cover (n + 1) / 2n of the full score matrix; more blocks
# save less and add ops (at 128 tokens, blocks of 32 took the tiny SFT step ~2 ms below one
# block of 128; blocks of 16 were slower than 32).
CAUSAL_BLOCK_MIN, CAUSAL_BLOCK_MAX = 32, 128


def causal_block(s: int) -> int:
    """Query rows per block of causal attention over `s` tokens."""
    return min(CAUSAL_BLOCK_MAX, max(CAUSAL_BLOCK_MIN, s // 4))


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray | None,
              scale: float, causal: bool = False, keys_last: bool = False,
              matmul_dtype: str | None = None) -> jnp.ndarray:
    """Grouped-query softmax attention with fp32 softmax; both products take their operands
    in `matmul_dtype` (None: q's dtype).

    q [B, S, H, D]; k, v [B, KV, T, D] (heads-major, H a multiple of KV), or with `keys_last`
    k [B, KV, D, T] (the KV cache's layout); mask bool [B, S, T] (or broadcastable to it), or
    None (every key visible). Returns [B, S, H, D].

    `causal=True` promises that query i sees no key after i (S == T, the mask holds the
    causal part): queries are then taken `causal_block(S)` rows at a time against only the keys
    up to the block's last row, so no [S, S] score tensor exists and the fully masked upper
    blocks (almost half the work at S >> block) are skipped. A skipped key has probability
    exp(-1e30 - max) = 0 exactly, so every row with a visible key gets the same softmax; only
    fully masked (padding) query rows, whose output nothing reads, average fewer values.
    """
    s, t = q.shape[1], v.shape[2]
    block = causal_block(s)
    if not causal or s <= block:
        return _attention(q, k, v, mask, scale, keys_last, matmul_dtype)
    if keys_last:
        raise ValueError("causal (blocked) attention takes k as [B, KV, T, D]")
    if s != t:
        raise ValueError(f"causal attention needs as many keys as queries, got {s} and {t}")
    if mask is not None:
        mask = jnp.broadcast_to(mask, (mask.shape[0], s, t))
    outs = []
    for start in range(0, s, block):
        end = min(start + block, s)
        outs.append(_attention(q[:, start:end], k[:, :, :end], v[:, :, :end],
                               None if mask is None else mask[:, start:end, :end], scale,
                               matmul_dtype=matmul_dtype))
    return jnp.concatenate(outs, axis=1)


def _attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray | None,
               scale: float, keys_last: bool = False,
               matmul_dtype: str | None = None) -> jnp.ndarray:
    """`attention` over all T keys at once.

    The G = H / KV query heads of a group are stacked along the query axis, so both products
    are batched matmuls over (B, KV) with no transposes of the cache's k / v. Normalising after
    the PV product divides [.., S, D] instead of [.., S, T].
    """
    b, s, h, d = q.shape
    kv, t = v.shape[1], v.shape[2]
    g = h // kv
    qg = q.reshape(b, s, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * s, d)
    qk = "bkqd,bkdt->bkqt" if keys_last else "bkqd,bktd->bkqt"
    mdtype = matmul_dtype or q.dtype
    logits = mixed_einsum(qk, qg, k, mdtype) * scale
    if mask is not None:
        mask = jnp.broadcast_to(mask, (mask.shape[0], s, t))
        mask = jnp.tile(mask, (1, g, 1))[:, None]
        logits = jnp.where(mask, logits, NEG_INF)
    probs = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    total = jnp.sum(probs, axis=-1, keepdims=True)
    out = mixed_einsum("bkqt,bktd->bkqd", probs, v, mdtype) / total
    return out.astype(q.dtype).reshape(b, kv, g, s, d).transpose(0, 3, 1, 2, 4).reshape(b, s, h, d)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)): the Qwen2 MLP (bias only in the vision tower)."""

    hidden: int
    intermediate: int
    axes: tuple[str, str]  # (model axis, mlp axis)
    prefix: str           # transformers module path of this MLP
    use_bias: bool
    lora: LoraConfig
    deterministic: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    matmul_dtype: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        def lin(name: str, features: int, axes: tuple[str, str]) -> Linear:
            return Linear(features, axes, f"{self.prefix}.{name}", self.use_bias, self.lora,
                          self.deterministic, self.dtype, self.param_dtype,
                          matmul_dtype=self.matmul_dtype, name=name)

        model_ax, mlp_ax = self.axes
        gate = lin("gate_proj", self.intermediate, (model_ax, mlp_ax))(x)
        up = lin("up_proj", self.intermediate, (model_ax, mlp_ax))(x)
        return lin("down_proj", self.hidden, (mlp_ax, model_ax))(nn.silu(gate) * up)
