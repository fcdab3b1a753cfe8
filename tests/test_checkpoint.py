"""Orbax checkpoints: exact resume, restore onto another mesh, killed and truncated saves,
retention, SIGTERM, parameter-only exports."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from skinr1_jax.train import checkpoint as ck
from skinr1_jax.train import optim
from skinr1_jax.train import sharding as shd
from skinr1_jax.train import state as st
from skinr1_jax.train import step as stp
from skinr1_jax.train import toy

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
CFG = toy.ToyConfig(lora_rank=4, lora_dropout=0.1)   # dropout: the RNG must resume too
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_device_mesh():
    return shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])


def fresh(mesh, lora=True):
    return toy.sft_trainer(CFG, optim.make_optimizer(1e-2, 20, 0.1), mesh, lora=lora)


def run(state, step, mesh, start, stop):
    state, metrics = toy.run_sft(state, step, mesh, CFG, start, stop)
    return state, [m["loss"] for m in metrics]


def test_exact_resume(tmp_path):
    mesh = one_device_mesh()
    state, _, step = fresh(mesh)
    _, straight = run(state, step, mesh, 0, 6)

    state, _, step = fresh(mesh)
    state, first = run(state, step, mesh, 0, 3)
    mgr = ck.CheckpointManager(tmp_path, every_steps=3, keep=2)
    assert mgr.should_save(3) and not mgr.should_save(4)
    mgr.save(3, state, data_state={"next_batch": 3}, config_text="seed = 42")
    mgr.close()
    del state

    target, _, step = fresh(mesh)       # a new process would start exactly like this
    mgr = ck.CheckpointManager(tmp_path, every_steps=3, keep=2)
    r = mgr.restore(target)
    saved_config = mgr.config_text(3)
    mgr.close()
    assert r.step == 3 and int(r.state.step) == 3
    assert r.data_state == {"next_batch": 3} and saved_config == "seed = 42"
    _, rest = run(r.state, step, mesh, r.data_state["next_batch"], 6)
    assert first + rest == straight            # bit for bit
    assert len(set(straight)) == 6


@needs8
def test_restore_onto_a_mesh_of_another_shape(tmp_path):
    m_a = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    state, _, _ = fresh(m_a, lora=False)
    mgr = ck.CheckpointManager(tmp_path, every_steps=1, keep=1)
    mgr.save(1, state, data_state={"i": 1})
    mgr.wait()
    m_b = shd.make_mesh(dict(data=1, fsdp=4, tensor=2))
    target, sh_b, _ = fresh(m_b, lora=False)
    abstract = stp.abstract_like(target, sh_b)
    r = mgr.restore(abstract.replace(frozen=target.frozen))
    mgr.close()
    up = r.state.trainable["params"]["up"]
    assert up.sharding.mesh.shape == m_b.shape and shd.shard_shapes(up) == (4, 16)
    for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(r.state))):
        np.testing.assert_array_equal(a, b)


def test_partial_save_is_ignored_and_truncated_checkpoint_is_a_clear_error(tmp_path):
    mesh = one_device_mesh()
    state, _, _ = fresh(mesh)
    mgr = ck.CheckpointManager(tmp_path, every_steps=1, keep=3)
    mgr.save(1, state, data_state={"i": 1})
    mgr.save(2, state, data_state={"i": 2})
    mgr.wait()
    # a save killed half way leaves a temporary directory: never listed, never restored
    partial = tmp_path / "3.orbax-checkpoint-tmp-1234567"
    shutil.copytree(tmp_path / "2", partial)
    shutil.rmtree(partial / "state")
    assert mgr.all_steps() == [1, 2]
    assert mgr.restore(state).data_state == {"i": 2}
    # a finished step whose array data was truncated afterwards
    for root, _, files in os.walk(tmp_path / "2" / "state"):
        for f in files:
            if root != str(tmp_path / "2" / "state"):
                open(os.path.join(root, f), "wb").close()
    with pytest.raises(ck.CheckpointError, match=r"2 is incomplete, corrupt"):
        mgr.restore(state, step=2)
    with pytest.raises(ck.CheckpointError, match="not a complete checkpoint"):
        mgr.restore(state, step=3)
    assert mgr.restore(state, step=1).data_state == {"i": 1}
    mgr.close()


def test_process_killed_during_save_resumes_from_last_complete(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        import jax, jax.numpy as jnp
        from skinr1_jax.train import checkpoint as ck
        from skinr1_jax.train.state import TrainState
        def state(v):
            big = {{"w": jnp.full((512, 512), v, jnp.float32)}}
            return TrainState(step=jnp.int32(v), trainable=big, frozen={{}}, opt_state=(),
                              rng=jax.random.PRNGKey(v))
        mgr = ck.CheckpointManager({str(tmp_path)!r}, every_steps=1, keep=5)
        mgr.save(1, state(1), data_state={{"i": 1}})
        mgr.wait()
        mgr.save(2, state(2), data_state={{"i": 2}})   # async: killed before it commits
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "XLA_FLAGS": ""}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    import jax.numpy as jnp
    target = st.TrainState(step=jnp.int32(0), trainable={"w": jnp.zeros((512, 512))},
                           frozen={}, opt_state=(), rng=jax.random.PRNGKey(0))
    mgr = ck.CheckpointManager(tmp_path, every_steps=1, keep=5)
    steps = mgr.all_steps()
    assert steps and steps[0] == 1
    r = mgr.restore(target)
    assert int(r.state.step) == r.step == steps[-1] and r.data_state == {"i": r.step}
    assert float(r.state.trainable["w"][0, 0]) == r.step
    mgr.close()


def test_keep_last_k_plus_best(tmp_path):
    state, _, _ = fresh(one_device_mesh())
    mgr = ck.CheckpointManager(tmp_path, every_steps=1, keep=2, best_metric="reward")
    for s, reward in enumerate([0.1, 0.9, 0.3, 0.2, 0.4], start=1):
        mgr.save(s, state, data_state={"i": s}, metrics={"reward": reward})
    mgr.wait()
    assert mgr.all_steps() == [2, 4, 5] and mgr.best_step() == 2
    mgr.close()


def test_sigterm_requests_a_save(tmp_path):
    mgr = ck.CheckpointManager(tmp_path, every_steps=100, keep=1)
    assert not mgr.should_save(7)
    os.kill(os.getpid(), signal.SIGTERM)
    assert mgr.preempted and mgr.should_save(7)
    mgr.close()
    assert signal.getsignal(signal.SIGTERM) is not mgr._on_sigterm


@needs8
def test_param_only_checkpoint_round_trip(tmp_path):
    m_a = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    state, sh, _ = fresh(m_a, lora=False)
    ck.save_params(tmp_path / "params", state.trainable)
    m_b = shd.make_mesh(dict(data=8, fsdp=1, tensor=1))
    _, sh_b, _ = fresh(m_b, lora=False)
    loaded = ck.load_params(tmp_path / "params", stp.abstract_like(state.trainable, sh_b.trainable))
    assert loaded["params"]["up"].sharding.spec == sh_b.trainable["params"]["up"].spec
    for a, b in zip(jax.tree.leaves(jax.device_get(state.trainable)), jax.tree.leaves(jax.device_get(loaded))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load_params(tmp_path / "nope")


def test_a_fresh_manager_restores_a_saved_frozen_base(tmp_path):
    """A new process (a fresh manager) must see that a checkpoint holds the frozen base and
    restore it, not keep the target's."""
    mesh = one_device_mesh()
    state, _, _ = fresh(mesh)
    mgr = ck.CheckpointManager(tmp_path, every_steps=1, async_save=False)
    mgr.save(1, state, data_state={}, include_frozen=True)
    mgr.close()
    target = state.replace(frozen=jax.tree.map(lambda x: x * 0, state.frozen))
    mgr = ck.CheckpointManager(tmp_path, every_steps=1, async_save=False)
    restored = mgr.restore(target)
    mgr.close()
    for got, want in zip(jax.tree.leaves(restored.state.frozen), jax.tree.leaves(state.frozen)):
        np.testing.assert_array_equal(got, want)
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(state.frozen))
