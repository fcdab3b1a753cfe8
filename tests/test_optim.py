"""The fused (flat) AdamW against optax's chain: the same updates, its state layout and
shardings, the train step with it, and resuming across the two layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.default import get_config
from skinr1_jax.stages import loop
from skinr1_jax.train import checkpoint as ck
from skinr1_jax.train import optim
from skinr1_jax.train import sharding as shd
from skinr1_jax.train import state as st
from skinr1_jax.train import toy

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
CFG = toy.ToyConfig()


def _tree(rng, dtype=jnp.float32):
    return {"w": jnp.asarray(rng.normal(size=(3, 4)), dtype),
            "inner": {"b": jnp.asarray(rng.normal(size=(5,)), dtype),
                      "s": jnp.asarray(rng.normal(size=(1, 1)), dtype)}}


def _run(opt, params, grads_seq):
    state = opt.init(params)
    update = jax.jit(opt.update)
    for g in grads_seq:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


@pytest.mark.parametrize("clip,decay", [(0.5, 0.1), (100.0, 0.0), (0.0, 0.1)])
def test_fused_adamw_matches_the_optax_chain(clip, decay):
    """Six updates with warm-up (the first update has learning rate 0), clipping that fires
    (0.5 under norms of ~4), does not fire, or is off, with and without weight decay."""
    rng = np.random.default_rng(0)
    params = _tree(rng)
    grads = [_tree(rng) for _ in range(6)]
    kw = dict(lr=1e-2, total_steps=20, warmup_ratio=0.1, weight_decay=decay, grad_clip=clip)
    ref_p, ref_s = _run(optim.make_optimizer(**kw), params, grads)
    fused = optim.make_optimizer(**kw, fused=True)
    assert isinstance(fused, optim.FusedTransformation)
    got_p, got_s = _run(fused, params, grads)
    moved = max(float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(ref_p), jax.tree.leaves(params)))
    assert moved > 1e-3   # the comparison below is not between unchanged parameters
    for a, b in zip(jax.tree.leaves(ref_p), jax.tree.leaves(got_p)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    adam = optax.tree.get(ref_s, "ScaleByAdamState")
    assert int(got_s.count) == int(adam.count) == 6
    np.testing.assert_allclose(got_s.mu, optim.ravel(adam.mu), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got_s.nu, optim.ravel(adam.nu), rtol=1e-6, atol=1e-12)
    g = grads[-1]
    np.testing.assert_allclose(optim.grad_norm(fused, g), optax.tree.norm(g), rtol=1e-6)


def test_fused_state_is_flat_float32_and_updates_keep_parameter_dtypes():
    rng = np.random.default_rng(1)
    params = _tree(rng, jnp.bfloat16)
    opt = optim.make_optimizer(1e-2, 10, 0.0, weight_decay=0.1, fused=True)
    state = opt.init(params)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert state.mu.shape == state.nu.shape == (n,) and state.mu.dtype == jnp.float32
    updates, state = opt.update(_tree(rng, jnp.bfloat16), state, params)
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
    assert float(jnp.max(jnp.abs(state.mu))) > 0


def test_fused_update_refuses_other_parameters_and_missing_params_for_decay():
    rng = np.random.default_rng(2)
    opt = optim.make_optimizer(1e-2, 10, 0.0, weight_decay=0.1, fused=True)
    state = opt.init(_tree(rng))
    with pytest.raises(ValueError, match="13 gradient values for a state of 18"):
        opt.update({"w": jnp.ones((13,))}, state, {"w": jnp.ones((13,))})
    with pytest.raises(ValueError, match="weight decay needs the parameters"):
        opt.update(_tree(rng), state)


def _toy_step(opt, mesh, seed=0):
    return toy.sft_trainer(CFG, opt, mesh, seed=seed, batch_size=8, seq_len=12)


def _train(state, step, mesh, start, stop):
    state, metrics = toy.run_sft(state, step, mesh, CFG, start, stop, batch_size=8, seq_len=12)
    return state, [(m["loss"], m["grad_norm"]) for m in metrics]


def test_train_step_with_the_fused_optimizer_matches_the_chain():
    mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    results = {}
    for fused in (False, True):
        opt = optim.make_optimizer(1e-2, 20, 0.0, weight_decay=0.01, fused=fused)
        state, _, step = _toy_step(opt, mesh)
        results[fused] = _train(state, step, mesh, 0, 4)
    (ref_state, ref_m), (got_state, got_m) = results[False], results[True]
    np.testing.assert_allclose(got_m, ref_m, rtol=1e-5)
    assert ref_m[0][0] != ref_m[-1][0]
    for a, b in zip(jax.tree.leaves(ref_state.trainable), jax.tree.leaves(got_state.trainable)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


@needs8
def test_fused_state_is_replicated_and_refused_on_sharded_parameters():
    opt = optim.make_optimizer(1e-2, 20, 0.0, fused=True)
    state, sh = st.create_train_state(lambda r: toy.init_variables(CFG, r), opt,
                                      shd.make_mesh(dict(data=8, fsdp=1, tensor=1)),
                                      jax.random.PRNGKey(0), lora=False)
    assert all(s.is_fully_replicated for s in jax.tree.leaves(sh.opt_state))
    assert state.opt_state.mu.sharding.is_fully_replicated
    with pytest.raises(ValueError, match=r"fused optimizer .* shards \d+ trainable"):
        st.create_train_state(lambda r: toy.init_variables(CFG, r), opt,
                              shd.make_mesh(dict(data=4, fsdp=2, tensor=1)),
                              jax.random.PRNGKey(0), lora=False)


@needs8
def test_config_picks_fused_only_where_the_mesh_replicates_parameters():
    config = get_config()
    assert config.sft.fused_optimizer
    replicated = shd.make_mesh(dict(data=8, fsdp=1, tensor=1))
    sharded = shd.make_mesh(dict(data=4, fsdp=1, tensor=2))
    pick = lambda c, m: isinstance(loop.make_optimizer(c, m, 1e-3, 10, 0.0),
                                   optim.FusedTransformation)
    assert pick(config, replicated) and not pick(config, sharded)
    config.sft.fused_optimizer = False
    assert not pick(config, replicated)


@needs8
@pytest.mark.parametrize("saved_fused", [True, False])
def test_resume_across_optimizer_layouts(tmp_path, saved_fused):
    """A checkpoint of one layout resumes onto a mesh that picks the other (fused on one
    device -> per-parameter with fsdp, and back) and continues as an uninterrupted run."""
    config = get_config()
    one = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    fsdp = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    first, then = (one, fsdp) if saved_fused else (fsdp, one)
    opt = loop.make_optimizer(config, first, 1e-2, 20, 0.0)
    assert isinstance(opt, optim.FusedTransformation) == saved_fused
    state, _, step = _toy_step(opt, first)
    _, straight = _train(state, step, first, 0, 5)

    state, _, step = _toy_step(opt, first)
    state, _ = _train(state, step, first, 0, 3)
    mgr = ck.CheckpointManager(tmp_path, every_steps=3, async_save=False)
    mgr.save(3, state, data_state={"next_batch": 3})
    assert mgr.holds_flat_optimizer_state(3) == saved_fused
    mgr.close()

    opt2 = loop.make_optimizer(config, then, 1e-2, 20, 0.0)
    assert isinstance(opt2, optim.FusedTransformation) != saved_fused
    target, sh2, step2 = _toy_step(opt2, then, seed=1)
    mgr = ck.CheckpointManager(tmp_path, every_steps=3, async_save=False)
    restored = loop.restore_state(mgr, target, sh2, opt2, config, then, 3)
    mgr.close()
    assert restored.step == 3
    assert jax.tree.structure(restored.state.opt_state) == jax.tree.structure(target.opt_state)
    for got, want in zip(jax.tree.leaves(restored.state.opt_state),
                         jax.tree.leaves(sh2.opt_state)):
        assert got.sharding == want
    _, resumed = _train(restored.state, step2, then, 3, 5)
    np.testing.assert_allclose(resumed, straight[3:], rtol=1e-5)
