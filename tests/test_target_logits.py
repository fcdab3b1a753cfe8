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


@pytest.mark.parametrize("remat", [False, True])
def test_forward_at_positions_equals_full_forward_at_those_rows(remat):
    """The last layer computing queries, MLP and norm at the logit positions only gives the
    full forward's logits there, with a left-padded row, repeated positions and remat; the
    prefill's last-position logits and cache are the full forward's too."""
    from skinr1_jax.model import forward
    from skinr1_jax.model.vlm import init_cache

    cfg = tiny_config(256).replace(remat=remat)
    variables = unbox(init_variables(cfg, jax.random.key(0)))
    grid = (1, 4, 4)
    b = random_batch(cfg, (grid,) * 3, seed=5, text_len=9, batch_size=3)
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values")}
    batch["attention_mask"] = b["attention_mask"].copy()
    batch["attention_mask"][2, :4] = 0
    s = b["input_ids"].shape[1]
    where = np.array([[s - 1, 3, 7, 7], [0, 10, 20, 5], [12, 4, 4, s - 2]], np.int32)
    full, _ = forward(cfg, variables, batch, grid_thw=(grid,) * 3)
    at, _ = forward(cfg, variables, {**batch, "logit_positions": where}, grid_thw=(grid,) * 3)
    assert at.shape == (3, 4, cfg.text.vocab_size)
    np.testing.assert_allclose(at, np.take_along_axis(np.asarray(full), where[..., None], 1),
                               rtol=1e-5, atol=1e-5)
    # as many positions as tokens: the whole layer runs, then the rows are picked
    every_row = np.tile(np.arange(s)[::-1], (3, 1)).astype(np.int32)
    at_all, _ = forward(cfg, variables, {**batch, "logit_positions": every_row},
                        grid_thw=(grid,) * 3)
    np.testing.assert_allclose(at_all, np.asarray(full)[:, ::-1], rtol=1e-5, atol=1e-5)
    last, cache = forward(cfg, variables, batch, grid_thw=(grid,) * 3,
                          cache=init_cache(cfg, 3, s), cache_index=0, last_logits_only=True)
    every, full_cache = forward(cfg, variables, batch, grid_thw=(grid,) * 3,
                                cache=init_cache(cfg, 3, s), cache_index=0)
    np.testing.assert_allclose(last, np.asarray(every)[:, -1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, np.asarray(full)[:, -1:], rtol=1e-5, atol=1e-5)
    # every token's keys and values are cached, in the last layer too
    for a, c in zip(jax.tree.leaves(cache), jax.tree.leaves(full_cache)):
        np.testing.assert_array_equal(a, c)


def _rl_batch(cfg, grid, completion_len: int) -> dict:
    """A real-VLM rollout batch: 2 prompts x 2 completions, the last `completion_len` columns
    the completions (of different lengths), reward inputs from the toy batch."""
    from skinr1_jax.train import toy

    b = random_batch(cfg, (grid,) * 4, seed=2, text_len=12, batch_size=4)
    s = b["input_ids"].shape[1]
    p = s - completion_len
    lengths = np.array([completion_len, 3, 5, 1])
    completion = (np.arange(completion_len)[None] < lengths[:, None]).astype(np.int32)
    rewards = toy.rl_batch(3, 2, 2, p, completion_len, 256, eos_id=3)
    batch = {k: b[k] for k in ("input_ids", "position_ids", "pixel_values")}
    batch["attention_mask"] = np.concatenate([b["attention_mask"][:, :p], completion], 1)
    batch["completion_mask"] = np.concatenate([np.zeros((4, p), np.int32), completion], 1)
    for key in ("group_ids", "format_ok", "option", "option_scores", "malignancy_pred",
                "malignancy_true", "ref_logprobs"):
        batch[key] = rewards[key]
    positions = np.broadcast_to(p + np.arange(completion_len), (4, completion_len))
    return batch, positions.astype(np.int32)


def test_rl_step_with_completion_positions_equals_full_logits_step():
    cfg = tiny_config(256)
    variables = unbox(init_variables(cfg, jax.random.key(0)))
    grid = (1, 4, 4)
    batch, positions = _rl_batch(cfg, grid, completion_len=8)
    mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    opt = optax.sgd(0.5)
    step_cfg = stp.StepConfig(lambda_sft=0.0, lambda_rl=1.0, beta=0.04, temperature=0.7)
    results = []
    for extra in ({}, {"target_positions": positions}):
        rl = shd.shard_batch({**batch, **extra}, mesh)
        sh = st.state_shardings(variables, opt, mesh, lora=False)
        state = st.state_from_variables(variables, opt, sh, jax.random.key(0), lora=False)
        logprob_fn = stp.make_logprob_fn(apply_fn_for(cfg, grid), 0.7, mesh,
                                         st.merge_variables(sh.trainable, sh.frozen))
        logp = np.asarray(logprob_fn(state.variables, rl)) * batch["completion_mask"]
        step = stp.make_train_step(apply_fn_for(cfg, grid), step_cfg, opt, mesh, sh, rl_example=rl)
        new, metrics = step(state, None, rl)
        results.append((logp, jax.device_get(new.trainable), jax.device_get(metrics)))
    (lp_full, p_full, m_full), (lp_at, p_at, m_at) = results
    assert np.abs(lp_full).sum() > 0
    np.testing.assert_allclose(lp_at, lp_full, rtol=1e-5, atol=1e-6)
    for key in ("rl_loss", "kl", "entropy", "grad_norm"):
        np.testing.assert_allclose(m_at[key], m_full[key], rtol=1e-5, err_msg=key)
    for a, c in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_at)):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)


def test_grouped_prompt_forward_and_step_equal_per_row():
    """Rows of a prompt sharing one pass over it (model.vlm.forward_grouped, the step's
    num_generations) give the per-row logits, log-probs and update; also with grad_accum 2."""
    from skinr1_jax.model import forward
    from skinr1_jax.model.vlm import forward_grouped
    from skinr1_jax.rollout import grpo_batch

    cfg = tiny_config(256)
    variables = unbox(init_variables(cfg, jax.random.key(0)))
    grid, g, t = (1, 4, 4), 4, 6
    prompts = dict(random_batch(cfg, (grid,) * 2, seed=4, text_len=10, batch_size=2))
    prompts["attention_mask"] = prompts["attention_mask"].copy()
    prompts["attention_mask"][1, :3] = 0         # a left-padded prompt
    prompts.update(option_scores=np.tile([0.75, 0.25, 0.0, 0.0], (2, 1)).astype(np.float32),
                   malignancy_true=np.zeros(2, np.int32))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 250, (2 * g, t)).astype(np.int32)
    lengths = np.array([6, 2, 4, 1, 5, 6, 3, 2], np.int32)
    parsed = {"format_ok": np.ones(8, np.int32), "malignancy_pred": np.zeros(8, np.int32),
              "option": np.array([0, 1, 2, 0, 1, 1, 0, 3], np.int32)}
    batch = grpo_batch(prompts, tokens, np.zeros((8, t), np.float32), lengths, parsed,
                       num_generations=g, first_group=0, open_ended=False).arrays()
    batch.pop("old_logprobs")
    batch["ref_logprobs"] = np.log(rng.uniform(0.01, 0.2, batch["input_ids"].shape)).astype(
        np.float32)
    s = batch["input_ids"].shape[1]
    model = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values")}
    full = np.asarray(forward(cfg, variables, model, grid_thw=(grid,) * 8)[0])[:, s - t - 1:s - 1]
    grouped = np.asarray(forward_grouped(cfg, variables, model, groups=g, prompt_len=s - t,
                                         grid_thw=(grid,) * 8))
    np.testing.assert_allclose(grouped, full, rtol=1e-5, atol=1e-5)

    mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    opt = optax.sgd(0.5)
    rl = shd.shard_batch(batch, mesh)
    sh = st.state_shardings(variables, opt, mesh, lora=False)

    def fresh_state() -> st.TrainState:   # the step donates its state
        return st.state_from_variables(variables, opt, sh, jax.random.key(0), lora=False)
    lp_row, lp_grp = (np.asarray(stp.make_logprob_fn(
        apply_fn_for(cfg, grid), 0.7, mesh, st.merge_variables(sh.trainable, sh.frozen),
        groups=groups)(fresh_state().variables, rl)) * batch["completion_mask"]
        for groups in (0, g))
    np.testing.assert_allclose(lp_grp, lp_row, rtol=1e-5, atol=1e-6)
    for accum in (1, 2):
        results = []
        for groups in (0, g):
            step_cfg = stp.StepConfig(lambda_sft=0.0, lambda_rl=1.0, beta=0.04, temperature=0.7,
                                      grad_accum=accum, num_generations=groups)
            assert step_cfg.prompt_groups == (groups // accum if groups else 0)
            step = stp.make_train_step(apply_fn_for(cfg, grid), step_cfg, opt, mesh, sh,
                                       rl_example=rl)
            new, metrics = step(fresh_state(), None, rl)
            results.append((jax.device_get(new.trainable), jax.device_get(metrics)))
        (p_row, m_row), (p_grp, m_grp) = results
        for key in ("rl_loss", "kl", "entropy", "grad_norm"):
            np.testing.assert_allclose(m_grp[key], m_row[key], rtol=1e-5, err_msg=key)
        for a, c in zip(jax.tree.leaves(p_row), jax.tree.leaves(p_grp)):
            np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
