"""Logits only at target positions (`data.max_target_tokens`): the same loss and the same
update as logits at every position, on the real tiny VLM."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from skinr1_jax.data.pipeline import target_positions
from skinr1_jax.model import init_variables, tiny_config, unbox
from skinr1_jax.model.convert import random_batch
from skinr1_jax.stages.loop import apply_fn_for
from skinr1_jax.train import losses
from skinr1_jax.train import sharding as shd
from skinr1_jax.train import state as st
from skinr1_jax.train import step as stp


def test_target_positions_lists_targets_in_order_and_refuses_overflow():
    mask = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
    got = target_positions(mask, 3)
    # position 0 is never a target (nothing predicts it); 0 pads
    np.testing.assert_array_equal(got, [[2, 3, 0], [4, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="max_target_tokens=1"):
        target_positions(mask, 1)


def test_loss_at_target_positions_equals_full_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 7, 11)).astype(np.float32)
    ids = rng.integers(0, 11, size=(2, 7))
    mask = np.array([[0, 0, 0, 1, 1, 1, 0], [1, 0, 1, 0, 1, 1, 1]])
    where = target_positions(mask, 6)
    picked = np.take_along_axis(logits, np.maximum(where - 1, 0)[..., None], axis=1)
    full = losses.sft_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask))
    at = losses.sft_loss_at(picked, ids, where)
    np.testing.assert_allclose(float(at[0]), float(full[0]), rtol=1e-6)
    assert float(at[1]) == float(full[1]) == 7


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_step_with_target_positions_equals_full_logits_step(grad_accum):
    cfg = tiny_config(256)
    variables = unbox(init_variables(cfg, jax.random.key(0)))
    grid = (1, 4, 4)
    b = random_batch(cfg, (grid,) * 4, seed=1, text_len=20, batch_size=4)
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values")}
    mask = np.zeros_like(b["input_ids"])
    mask[:, 30:] = 1
    mask[1, 35:] = 0           # rows with different target counts
    batch["loss_mask"] = mask
    mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    opt = optax.sgd(0.5)
    results = []
    for extra in ({}, {"target_positions": target_positions(mask, 16)}):
        sft = shd.shard_batch({**batch, **extra}, mesh)
        sh = st.state_shardings(variables, opt, mesh, lora=False)
        state = st.state_from_variables(variables, opt, sh, jax.random.key(0), lora=False)
        step = stp.make_train_step(apply_fn_for(cfg, grid), stp.StepConfig(grad_accum=grad_accum),
                                   opt, mesh, sh, sft_example=sft)
        new, metrics = step(state, sft, None)
        results.append((jax.device_get(new.trainable), float(metrics["sft_loss"])))
    (p_full, l_full), (p_at, l_at) = results
    np.testing.assert_allclose(l_at, l_full, rtol=1e-5)
    for a, c in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_at)):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
