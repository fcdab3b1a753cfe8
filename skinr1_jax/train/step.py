"""The joint jitted training step: lambda_sft * SFT + lambda_rl * GRPO in one update.

`make_train_step` builds one compiled variant per objective: pure SFT (lambda_rl = 0: the RL
branch is not traced and rl_batch may be None), pure RL (lambda_sft = 0) or joint. Gradient
accumulation runs inside the step over `grad_accum` micro-batches with the loss denominators
(SFT tokens, GRPO sequences or tokens) counted once over the whole batch, so the accumulated
gradient equals the big-batch gradient.

Batches are dicts in input-token coordinates (see losses.py):
  SFT: model inputs (input_ids i32[B,S], attention_mask, position_ids i32[3,B,S], ...)
       + loss_mask i32[B,S] (1 = assistant target token).
  RL:  model inputs of prompt + completion + completion_mask i32[B,S] (completion tokens up
       to and including EOS), group_ids i32[B], the reward inputs of rewards.compute_rewards,
       ref_logprobs f32[B,S] when beta != 0, old_logprobs f32[B,S] when mu > 1.
`apply_fn(variables, model_inputs, rng, deterministic) -> logits f32[B,S,V]` receives only the
model inputs, with B = batch // grad_accum rows. RL batches with `target_positions` (their
completion slots P..S-1) get logits there only; with `StepConfig.num_generations` > 1 as well,
`apply_fn(..., shared_prompt=(groups, P))` must return those logits f32[B, S-P, V] for rows in
consecutive groups sharing a prompt (model.vlm.forward_grouped runs each prompt once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from skinr1_jax.train import grpo, losses, optim, rewards
from skinr1_jax.train import sharding as shd
from skinr1_jax.train.state import TrainState, merge_variables

ApplyFn = Callable[[Any, Mapping[str, jax.Array], jax.Array, bool], jax.Array]

NON_MODEL_KEYS = frozenset({
    "loss_mask", "target_positions", "completion_mask", "group_ids", "ref_logprobs",
    "old_logprobs", "advantages",
    *rewards.REWARD_KEYS, *rewards.OPEN_KEYS, *rewards.CHECK_KEYS})


@dataclasses.dataclass(frozen=True)
class StepConfig:
    lambda_sft: float = 1.0
    lambda_rl: float = 0.0
    grad_accum: int = 1
    temperature: float = 1.0          # sampling temperature: log-probs use logits / T
    beta: float = 0.04
    mu: int = 1                       # > 1: clipped ratio against rl_batch["old_logprobs"]
    clip_low: float = 0.2
    clip_high: float = 0.2
    scale_std: bool = True
    loss_agg: str = "seq_mean"
    reward: rewards.RewardSpec = rewards.RewardSpec()
    # Completions per prompt in RL batches (rows prompt-major): > 1 runs each prompt once for
    # its group (apply_fn's shared_prompt); 0 = every row on its own.
    num_generations: int = 0

    def __post_init__(self):
        if self.lambda_sft < 0 or self.lambda_rl < 0 or self.lambda_sft + self.lambda_rl == 0:
            raise ValueError(f"lambda_sft={self.lambda_sft}, lambda_rl={self.lambda_rl}: need "
                             "non-negative weights, at least one positive")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum={self.grad_accum}: must be >= 1")
        if self.loss_agg not in grpo.LOSS_AGGS:
            raise ValueError(f"rl.loss_agg={self.loss_agg!r}: expected one of {grpo.LOSS_AGGS}")
        if self.temperature <= 0:
            raise ValueError(f"rl.temperature={self.temperature}: must be > 0")

    @property
    def sft(self) -> bool:
        return self.lambda_sft > 0

    @property
    def rl(self) -> bool:
        return self.lambda_rl > 0

    @property
    def prompt_groups(self) -> int:
        """Rows per prompt inside one micro-batch (0: no sharing). The strided micro-batch split
        keeps G / grad_accum consecutive rows of each prompt together when that divides."""
        g, n = self.num_generations, self.grad_accum
        return g // n if g % n == 0 and g // n > 1 else 0

    @classmethod
    def from_config(cls, cfg: Any, stage: str) -> "StepConfig":
        """Step settings of the `sft` or `rl` stage from the project config."""
        if stage == "sft":
            return cls(lambda_sft=1.0, lambda_rl=0.0, grad_accum=int(cfg.sft.grad_accum))
        if stage != "rl":
            raise ValueError(f"stage {stage!r}: expected 'sft' or 'rl'")
        rl = cfg.rl
        return cls(lambda_sft=float(rl.lambda_sft), lambda_rl=float(rl.lambda_rl),
                   grad_accum=int(rl.get("grad_accum", 1)), temperature=float(rl.temperature),
                   beta=float(rl.beta), mu=int(rl.mu), clip_low=float(rl.clip_low),
                   clip_high=float(rl.clip_high), scale_std=bool(rl.scale_std),
                   loss_agg=str(rl.loss_agg), reward=rewards.RewardSpec.from_config(rl.reward),
                   num_generations=int(rl.num_generations))


def model_inputs(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}


def _batch_dim(key: str) -> int:
    return 1 if key == "position_ids" else 0


def split_microbatches(batch: Mapping[str, jax.Array], n: int) -> dict[str, jax.Array]:
    """[n, ...] stacks of micro-batches. Row i goes to micro-batch i % n (strided), so each
    micro-batch keeps rows on every data shard. Arrays whose batch dimension is a multiple k*B
    of the rows (flattened image patches) split with their rows."""
    rows = batch["input_ids"].shape[0]
    if rows % n:
        raise ValueError(f"batch of {rows} rows does not split into grad_accum={n} micro-batches")
    out = {}
    for key, x in batch.items():
        bdim = _batch_dim(key)
        x = jnp.moveaxis(x, bdim, 0)
        if x.shape[0] % rows:
            raise ValueError(f"batch['{key}'] leading size {x.shape[0]} is not a multiple of "
                             f"the {rows} rows")
        per_row, rest = x.shape[0] // rows, x.shape[1:]
        x = x.reshape(rows // n, n, per_row, *rest)
        x = jnp.swapaxes(x, 0, 1).reshape(n, (rows // n) * per_row, *rest)
        out[key] = jnp.moveaxis(x, 1, bdim + 1)
    return out


def _tree_zeros(tree: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, tree)


class TrainStep:
    """A jitted step with its mesh: calls and lowerings run under the mesh and the logical
    rules (so model-side `nn.with_logical_constraint` works)."""

    def __init__(self, jitted, mesh: Mesh):
        self.jitted = jitted
        self.mesh = mesh

    def __call__(self, state: TrainState, sft_batch=None, rl_batch=None):
        with shd.mesh_context(self.mesh):
            return self.jitted(state, sft_batch, rl_batch)

    def lower(self, state, sft_batch=None, rl_batch=None):
        with shd.mesh_context(self.mesh):
            return self.jitted.lower(state, sft_batch, rl_batch)

    def cache_size(self) -> int:
        """Number of compiled executables (one per distinct input shape)."""
        return self.jitted._cache_size()


def make_train_step(apply_fn: ApplyFn, step_cfg: StepConfig,
                    optimizer: optax.GradientTransformation, mesh: Mesh,
                    state_shardings: TrainState, *, sft_example: Any = None,
                    rl_example: Any = None, credit: Any = None) -> TrainStep:
    """Build `step(state, sft_batch, rl_batch) -> (state, metrics)`.

    sft_example / rl_example: a batch (arrays or ShapeDtypeStructs) of the variant's structure,
    used for the explicit input shardings; credit: the open-ended credit matrix [N, N]
    (rewards.credit_matrix) or None for MCQ only. Metrics are replicated f32 scalars.
    """
    c = step_cfg
    if c.sft and sft_example is None:
        raise ValueError("make_train_step: lambda_sft > 0 needs sft_example")
    if c.rl and rl_example is None:
        raise ValueError("make_train_step: lambda_rl > 0 needs rl_example")
    if c.rl:
        needed = ["completion_mask", "group_ids", *rewards.REWARD_KEYS]
        needed += ["ref_logprobs"] if c.beta != 0 else []
        needed += ["old_logprobs"] if c.mu > 1 else []
        needed += list(rewards.OPEN_KEYS) if credit is not None else []
        needed += list(rewards.CHECK_KEYS) if c.reward.check_weight else []
        missing = [k for k in needed if k not in rl_example]
        if missing:
            raise KeyError(f"rl batch lacks {missing} (beta={c.beta}, mu={c.mu})")
    credit_arr = None if credit is None else jnp.asarray(credit, jnp.float32)
    replicated = NamedSharding(mesh, P())
    logits_names = ("batch", "length", "act_vocab")

    def forward(variables, batch, rng, shared_prompt=None):
        inputs = jax.lax.with_sharding_constraint(
            model_inputs(batch), shd.batch_shardings(model_inputs(batch), mesh))
        kw = {} if shared_prompt is None else {"shared_prompt": shared_prompt}
        logits = apply_fn(variables, inputs, rng, False, **kw)
        return shd.constrain(logits, logits_names, mesh)

    def micro_loss(trainable, frozen, sft_mb, rl_mb, rng, sft_count, rl_count):
        variables = merge_variables(trainable, frozen)
        loss = jnp.zeros((), jnp.float32)
        aux = {}
        if c.sft:
            if "target_positions" in sft_mb:
                where = sft_mb["target_positions"]
                logits = forward(variables, {**sft_mb, "logit_positions": jnp.maximum(where - 1, 0)},
                                 jax.random.fold_in(rng, 0))
                s, _ = losses.sft_loss_at(logits, sft_mb["input_ids"], where)
            else:
                logits = forward(variables, sft_mb, jax.random.fold_in(rng, 0))
                s, _ = losses.sft_loss(logits, sft_mb["input_ids"], sft_mb["loss_mask"])
            aux["sft_sum"] = s
            loss = loss + c.lambda_sft * s / jnp.maximum(sft_count, 1.0)
        if c.rl:
            logp, ent = rl_logprobs(
                lambda b, shared: forward(variables, b, jax.random.fold_in(rng, 1), shared),
                rl_mb, c.temperature, c.prompt_groups)
            s, _, m = grpo.grpo_loss(
                logp, rl_mb["completion_mask"], rl_mb["advantages"],
                ref_logprobs=rl_mb.get("ref_logprobs") if c.beta != 0 else None,
                old_logprobs=rl_mb.get("old_logprobs") if c.mu > 1 else None,
                beta=c.beta, clip_low=c.clip_low, clip_high=c.clip_high, loss_agg=c.loss_agg,
                entropy=ent)
            aux["rl_sum"] = s
            for k in ("kl", "clip_frac", "entropy"):   # token means -> token-weighted sums
                aux[f"{k}_wsum"] = m[k] * m["tokens"]
            loss = loss + c.lambda_rl * s / jnp.maximum(rl_count, 1.0)
        return loss, aux

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def joint_step(state: TrainState, sft_batch, rl_batch):
        if c.sft and sft_batch is None:
            raise ValueError("joint step: lambda_sft > 0 but sft_batch is None")
        if c.rl and rl_batch is None:
            raise ValueError("joint step: lambda_rl > 0 but rl_batch is None")
        rng, step_rng = jax.random.split(state.rng)
        metrics = {}
        sft_count = rl_count = jnp.zeros((), jnp.float32)
        sft_b = rl_b = None
        if c.sft:
            sft_b = dict(sft_batch)
            sft_count = jnp.sum(sft_b["loss_mask"][:, 1:].astype(jnp.float32))
        if c.rl:
            rl_b = dict(rl_batch)
            total, comps = rewards.compute_rewards(rl_b, c.reward, credit_arr)
            adv, share = grpo.group_advantages(total, rl_b["group_ids"], scale_std=c.scale_std)
            rl_b["advantages"] = adv
            rl_count = grpo.loss_denominator(rl_b["completion_mask"], c.loss_agg)
            tokens = jnp.sum(rl_b["completion_mask"].astype(jnp.float32))
            metrics.update({f"reward/{k}": jnp.mean(v) for k, v in comps.items()})
            metrics.update({"reward/total": jnp.mean(total), "reward/std": jnp.std(total),
                            "adv/nonzero_group_share": share,
                            "completion_len": tokens / total.shape[0]})

        n = c.grad_accum
        if n == 1:
            (loss, aux), grads = grad_fn(state.trainable, state.frozen, sft_b, rl_b, step_rng,
                                         sft_count, rl_count)
        else:
            sft_mbs = None if sft_b is None else split_microbatches(sft_b, n)
            rl_mbs = None if rl_b is None else split_microbatches(rl_b, n)

            def body(carry, xs):
                g_acc, l_acc, a_acc = carry
                k, sft_mb, rl_mb = xs
                (l, a), g = grad_fn(state.trainable, state.frozen, sft_mb, rl_mb,
                                    jax.random.fold_in(step_rng, k), sft_count, rl_count)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l,
                        jax.tree.map(jnp.add, a_acc, a)), None

            aux0 = jax.eval_shape(lambda: grad_fn(
                state.trainable, state.frozen,
                None if sft_mbs is None else jax.tree.map(lambda x: x[0], sft_mbs),
                None if rl_mbs is None else jax.tree.map(lambda x: x[0], rl_mbs),
                step_rng, sft_count, rl_count)[0][1])
            carry0 = (_tree_zeros(state.trainable), jnp.zeros((), jnp.float32), _tree_zeros(aux0))
            (grads, loss, aux), _ = jax.lax.scan(body, carry0, (jnp.arange(n), sft_mbs, rl_mbs))

        grad_norm = optim.grad_norm(optimizer, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics.update({"loss": loss, "grad_norm": grad_norm})
        if c.sft:
            metrics["sft_loss"] = aux["sft_sum"] / jnp.maximum(sft_count, 1.0)
            metrics["sft_tokens"] = sft_count
        if c.rl:
            metrics["rl_loss"] = aux["rl_sum"] / jnp.maximum(rl_count, 1.0)
            for k in ("kl", "clip_frac", "entropy"):
                metrics[k] = aux[f"{k}_wsum"] / jnp.maximum(tokens, 1.0)
        metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
        new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state,
                                  rng=rng)
        return new_state, metrics

    sft_sh = shd.batch_shardings(sft_example, mesh) if c.sft else None
    rl_sh = shd.batch_shardings(rl_example, mesh) if c.rl else None
    jitted = jax.jit(joint_step, in_shardings=(state_shardings, sft_sh, rl_sh),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    return TrainStep(jitted, mesh)


def rl_logprobs(logits_fn: Callable[[Mapping[str, jax.Array], Any], jax.Array],
                batch: Mapping[str, jax.Array], temperature: float, groups: int = 0
                ) -> tuple[jax.Array, jax.Array]:
    """Per-token log-probs and entropies f32[B, S] of an RL batch at `temperature`, from
    `logits_fn(batch, shared_prompt) -> logits`. With `target_positions` (the completion slots
    P..S-1 of every row, rollout.grpo_batch) logits are computed there only: the prompt, about
    half of each row, needs no vocabulary projection (the largest matmul of a small model) nor
    its softmax; with `groups` > 1 rows of a prompt also share one pass over it."""
    if "target_positions" not in batch:
        logits = logits_fn(batch, None)
        return (losses.token_logprobs(logits, batch["input_ids"], temperature),
                losses.token_entropy(jax.lax.stop_gradient(logits), temperature))
    where = batch["target_positions"]
    if groups > 1:
        logits = logits_fn(batch, (groups, batch["input_ids"].shape[1] - where.shape[1]))
    else:
        logits = logits_fn({**batch, "logit_positions": where - 1}, None)
    return losses.completion_logprobs(logits, batch["input_ids"], where, temperature)


def make_logprob_fn(apply_fn: ApplyFn, temperature: float, mesh: Mesh, variables_shardings: Any,
                    groups: int = 0) -> Callable[[Any, Mapping[str, jax.Array]], jax.Array]:
    """Jitted `(variables, batch) -> f32[B, S]` per-token log-probs at `temperature`
    (deterministic forward), for the reference model (ref_logprobs) and the rollout policy
    (old_logprobs). Entries outside the completion mask are meaningless; callers mask.
    `groups`: completions per prompt, as StepConfig.num_generations."""

    def fn(variables, batch):
        def logits_of(b, shared):
            kw = {} if shared is None else {"shared_prompt": shared}
            logits = apply_fn(variables, model_inputs(b), jax.random.PRNGKey(0), True, **kw)
            return shd.constrain(logits, ("batch", "length", "act_vocab"), mesh)

        # Sharded like the batch's [B, S] arrays (replicated when B does not divide), so the
        # result joins the batch on device.
        return shd.constrain(rl_logprobs(logits_of, batch, temperature, groups)[0],
                             ("batch", "length"), mesh)

    jitted = jax.jit(fn, in_shardings=(variables_shardings, None))

    def call(variables, batch):
        with shd.mesh_context(mesh):
            return jitted(variables, batch)
    return call


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings, for AOT lowering and orbax restores."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def compile_step(step: TrainStep, state: Any, sft_batch: Any = None, rl_batch: Any = None, *,
                 memory_limit_bytes: int | None = None, log: Callable[[str], None] = print):
    """Lower and compile `step` for these (abstract or concrete) inputs ahead of time and
    report its per-device memory. Raises MemoryError, with the figures, when the compiled step
    needs more than the device memory (from `memory_limit_bytes` or the backend's
    `bytes_limit`, where it reports one). Returns (compiled, report dict)."""
    compiled = step.lower(state, sft_batch, rl_batch).compile()
    mem = compiled.memory_analysis()
    report: dict[str, int] = {}
    if mem is not None:
        report = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in
                  ("argument", "output", "temp", "alias", "generated_code")}
        report["total"] = (report["argument"] + report["output"] + report["temp"]
                           - report["alias"] + report["generated_code"])
    limit = memory_limit_bytes
    if limit is None:
        stats = jax.local_devices()[0].memory_stats() or {}
        limit = stats.get("bytes_limit")
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    if report:
        log("compiled step, per device: " + ", ".join(f"{k} {gib(v)}" for k, v in report.items())
            + (f" (device limit {gib(limit)})" if limit else ""))
        if limit and report["total"] > limit:
            raise MemoryError(
                f"the compiled train step needs {gib(report['total'])} per device "
                f"(arguments {gib(report['argument'])}, temporaries {gib(report['temp'])}) but "
                f"the device has {gib(limit)}: lower the batch size, raise grad_accum, enable "
                "model.remat, use LoRA, or add fsdp/tensor devices to the mesh")
    return compiled, report
