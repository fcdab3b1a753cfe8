"""A tiny causal LM with logical axis names and an optional LoRA collection: the stand-in
model of the training-core tests and smoke runs (the step is model-agnostic)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    vocab: int = 32
    embed: int = 16
    mlp: int = 32
    heads: int = 4
    head_dim: int = 4
    lora_rank: int = 0
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0


def _p(init, *names):
    return nn.with_logical_partitioning(init, names)


class ToyLM(nn.Module):
    cfg: ToyConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask, deterministic: bool = True):
        c = self.cfg
        init = nn.initializers.normal(0.2)
        emb = self.param("embedding", _p(init, "vocab", "embed"), (c.vocab, c.embed))
        x = emb[input_ids]
        q = jnp.einsum("bsd,dhk->bshk", x, self.param("q", _p(init, "embed", "heads", "head_dim"),
                                                      (c.embed, c.heads, c.head_dim)))
        k = jnp.einsum("bsd,dhk->bshk", x, self.param("k", _p(init, "embed", "heads", "head_dim"),
                                                      (c.embed, c.heads, c.head_dim)))
        v = jnp.einsum("bsd,dhk->bshk", x, self.param("v", _p(init, "embed", "heads", "head_dim"),
                                                      (c.embed, c.heads, c.head_dim)))
        s = x.shape[1]
        causal = jnp.tril(jnp.ones((s, s), bool))[None, None]
        keep = causal & (attention_mask[:, None, None, :] > 0)
        att = jnp.einsum("bqhk,bshk->bhqs", q, k) / jnp.sqrt(c.head_dim)
        att = jax.nn.softmax(jnp.where(keep, att, -1e9), axis=-1)
        o = jnp.einsum("bhqs,bshk->bqhk", att, v)
        x = x + jnp.einsum("bqhk,hkd->bqd", o, self.param(
            "o", _p(init, "heads", "head_dim", "embed"), (c.heads, c.head_dim, c.embed)))
        w_up = self.param("up", _p(init, "embed", "mlp"), (c.embed, c.mlp))
        h = x @ w_up
        if c.lora_rank > 0:
            a = self.variable("lora", "up_a", _p(init, "embed", "lora_rank"),
                              self.make_rng("params") if self.is_initializing() else None,
                              (c.embed, c.lora_rank)).value
            b = self.variable("lora", "up_b", _p(nn.initializers.zeros, "lora_rank", "mlp"),
                              None, (c.lora_rank, c.mlp)).value
            xd = nn.Dropout(c.lora_dropout)(x, deterministic=deterministic)
            h = h + (xd @ a @ b) * (c.lora_alpha / c.lora_rank)
        x = x + jax.nn.gelu(h) @ self.param("down", _p(init, "mlp", "embed"), (c.mlp, c.embed))
        return x @ self.param("head", _p(init, "embed", "vocab"), (c.embed, c.vocab))


def init_variables(cfg: ToyConfig, rng: jax.Array) -> dict[str, Any]:
    """Boxed variables {"params", "lora"} ("lora" empty at rank 0)."""
    ids = jnp.zeros((1, 4), jnp.int32)
    variables = ToyLM(cfg).init({"params": rng}, ids, jnp.ones_like(ids))
    return {"params": variables["params"], "lora": variables.get("lora", {})}


def make_apply_fn(cfg: ToyConfig):
    """apply_fn(variables, batch, rng, deterministic) -> logits f32[B, S, V]."""
    model = ToyLM(cfg)

    def apply_fn(variables: Mapping[str, Any], batch: Mapping[str, jax.Array], rng: jax.Array,
                 deterministic: bool) -> jax.Array:
        return model.apply(dict(variables), batch["input_ids"], batch["attention_mask"],
                           deterministic=deterministic, rngs={"dropout": rng})
    return apply_fn


def sft_batch(seed: int, batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    """A random SFT batch: the second half of each row is the assistant turn."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (batch, seq)).astype(np.int32)
    lengths = rng.integers(seq // 2 + 1, seq + 1, batch)
    attn = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    loss_mask = ((np.arange(seq)[None] >= seq // 2) & (attn > 0)).astype(np.int32)
    return {"input_ids": ids * attn, "attention_mask": attn, "loss_mask": loss_mask}


def rl_batch(seed: int, prompts: int, generations: int, prompt_len: int, completion_len: int,
             vocab: int, eos_id: int, *, with_ref: bool = True, with_old: bool = False
             ) -> dict[str, np.ndarray]:
    """A random rollout batch with reward inputs, G completions per prompt (EOS == pad)."""
    from skinr1_jax.train.grpo import assign_group_ids, completion_mask
    rng = np.random.default_rng(seed)
    b = prompts * generations
    prompt = np.repeat(rng.integers(1, vocab, (prompts, prompt_len)), generations, 0)
    comp = rng.integers(1, vocab, (b, completion_len))
    comp[comp == eos_id] = 1
    ends = rng.integers(1, completion_len + 1, b)
    for i, e in enumerate(ends):
        if e < completion_len:
            comp[i, e - 1:] = eos_id      # EOS then pad with the same id
    cmask = completion_mask(comp, eos_id)
    ids = np.concatenate([prompt, comp], 1).astype(np.int32)
    full_mask = np.concatenate([np.zeros_like(prompt), cmask], 1).astype(np.int32)
    attn = np.concatenate([np.ones_like(prompt), cmask], 1).astype(np.int32)
    out = {
        "input_ids": ids, "attention_mask": attn, "completion_mask": full_mask,
        "group_ids": assign_group_ids(prompts, generations),
        "format_ok": rng.integers(0, 2, b).astype(np.int32),
        "option": rng.integers(-1, 4, b).astype(np.int32),
        "option_scores": np.repeat(
            [rng.permutation([0.75, 0.25, 0.0, 0.0]) for _ in range(prompts)], generations, 0
        ).astype(np.float32),
        "malignancy_pred": rng.integers(-1, 4, b).astype(np.int32),
        "malignancy_true": np.repeat(rng.integers(0, 4, prompts), generations).astype(np.int32),
    }
    if with_ref:
        out["ref_logprobs"] = np.log(rng.uniform(0.01, 0.2, ids.shape)).astype(np.float32)
    if with_old:
        out["old_logprobs"] = np.log(rng.uniform(0.01, 0.2, ids.shape)).astype(np.float32)
    return out


def sft_trainer(cfg: ToyConfig, optimizer: Any, mesh: Any, *, lora: bool = False, seed: int = 0,
                batch_size: int = 4, seq_len: int = 8) -> tuple[Any, Any, Any]:
    """(state, state shardings, jitted SFT step) of the toy model on `mesh`."""
    from skinr1_jax.train import state as st, step as stp

    state, shardings = st.create_train_state(lambda r: init_variables(cfg, r), optimizer, mesh,
                                             jax.random.PRNGKey(seed), lora=lora)
    step = stp.make_train_step(make_apply_fn(cfg), stp.StepConfig(), optimizer, mesh, shardings,
                               sft_example=sft_batch(0, batch_size, seq_len, cfg.vocab))
    return state, shardings, step


def run_sft(state: Any, step: Any, mesh: Any, cfg: ToyConfig, start: int, stop: int,
            batch_size: int = 4, seq_len: int = 8) -> tuple[Any, list[dict[str, float]]]:
    """Steps start..stop-1 of `sft_trainer`'s step, each on its own batch (seeded by the
    step number, so a resumed run sees the batches an uninterrupted one would)."""
    from skinr1_jax.train import sharding as shd

    out = []
    for i in range(start, stop):
        batch = shd.shard_batch(sft_batch(i, batch_size, seq_len, cfg.vocab), mesh)
        state, metrics = step(state, batch, None)
        out.append({k: float(v) for k, v in metrics.items()})
    return state, out
