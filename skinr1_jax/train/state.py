"""The training state and its trainable / frozen split.

Full fine-tuning trains the "params" collection. LoRA trains only the "lora" collection: the
base stays frozen and the optimizer holds state for the adapters only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from skinr1_jax.train import sharding as shd


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # i32[], optimizer updates done
    trainable: Any         # {"params": ...} or {"lora": ...}
    frozen: Any            # the other collections (the LoRA base), never updated
    opt_state: Any
    rng: jax.Array         # u32[2] raw key, split once per step

    @property
    def variables(self) -> dict[str, Any]:
        return merge_variables(self.trainable, self.frozen)


def trainable_collections(lora: bool) -> tuple[str, ...]:
    return ("lora",) if lora else ("params",)


def split_variables(variables: Mapping[str, Any], lora: bool) -> tuple[dict, dict]:
    """(trainable, frozen) collections of a variable dict."""
    names = trainable_collections(lora)
    missing = [n for n in names if n not in variables]
    if missing:
        raise ValueError(f"variables lack collection(s) {missing} needed for "
                         f"{'LoRA' if lora else 'full fine-tuning'} (have {sorted(variables)})")
    trainable = {k: v for k, v in variables.items() if k in names}
    frozen = {k: v for k, v in variables.items() if k not in names}
    return trainable, frozen


def merge_variables(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
    return {**frozen, **trainable}


def _build(variables: Mapping[str, Any], optimizer: optax.GradientTransformation,
           rng: jax.Array, lora: bool) -> TrainState:
    trainable, frozen = split_variables(variables, lora)
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
                      opt_state=optimizer.init(trainable), rng=rng)


def state_shardings(boxed_variables: Any, optimizer: optax.GradientTransformation, mesh: Mesh,
                    lora: bool) -> TrainState:
    """A TrainState of NamedShardings from (abstract) variables boxed with logical names."""
    var_sh = shd.param_shardings(boxed_variables, mesh)
    trainable_sh, frozen_sh = split_variables(var_sh, lora)
    abstract_trainable, _ = split_variables(nn.unbox(boxed_variables), lora)
    replicated = NamedSharding(mesh, P())
    return TrainState(
        step=replicated, trainable=trainable_sh, frozen=frozen_sh,
        opt_state=shd.opt_state_shardings(optimizer, abstract_trainable, trainable_sh, mesh),
        rng=replicated)


def create_train_state(init_fn: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
                       mesh: Mesh, rng: jax.Array, *, lora: bool
                       ) -> tuple[TrainState, TrainState]:
    """Initialise parameters and optimizer state directly in their shardings.

    `init_fn(rng)` returns variables boxed with logical names (e.g. the model's
    `init_variables(cfg, rng)`). Returns (state, state_shardings).
    """
    init_rng, state_rng = jax.random.split(rng)
    shardings = state_shardings(jax.eval_shape(init_fn, init_rng), optimizer, mesh, lora)
    build = jax.jit(lambda r, s: _build(nn.unbox(init_fn(r)), optimizer, s, lora),
                    out_shardings=shardings)
    return build(init_rng, state_rng), shardings


def state_from_variables(variables: Mapping[str, Any], optimizer: optax.GradientTransformation,
                         shardings: TrainState, rng: jax.Array, *, lora: bool) -> TrainState:
    """A fresh TrainState around existing (e.g. imported) unboxed variables."""
    var_sh = merge_variables(shardings.trainable, shardings.frozen)
    variables = jax.device_put(dict(variables), var_sh)
    build = jax.jit(lambda v, s: _build(v, optimizer, s, lora), out_shardings=shardings)
    return build(variables, rng)
