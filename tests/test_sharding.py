"""Mesh, logical rules, and the sharded step against the single-device step."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from skinr1_jax.train import sharding as shd
from skinr1_jax.train import state as st
from skinr1_jax.train import step as stp
from skinr1_jax.train import toy

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
CFG = toy.ToyConfig(vocab=32, embed=16, mlp=32, heads=4, head_dim=4)


@needs8
def test_make_mesh_fills_minus_one_and_checks_sizes():
    m = shd.make_mesh(dict(data=-1, fsdp=2, tensor=1))
    assert dict(m.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
    with pytest.raises(ValueError, match="needs 16 devices"):
        shd.make_mesh(dict(data=4, fsdp=4, tensor=1))
    with pytest.raises(ValueError, match="only one axis"):
        shd.make_mesh(dict(data=-1, fsdp=-1, tensor=1))
    with pytest.raises(ValueError, match="mesh.tensor"):
        shd.make_mesh(dict(data=-1, fsdp=1))


@needs8
def test_logical_rules_divisibility_and_unknown_names():
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    assert shd.logical_to_spec(("embed", "mlp"), (16, 32), mesh) == P("fsdp", "tensor")
    assert shd.logical_to_spec(("batch", "length"), (8, 5), mesh) == P(("data", "fsdp"), None)
    # a dimension the axis does not divide stays replicated instead of failing
    assert shd.logical_to_spec(("embed", "kv_heads"), (16, 3), mesh) == P("fsdp", None)
    assert shd.logical_to_spec(("batch",), (2,), mesh) == P("data")
    with pytest.raises(ValueError, match="'bogus'.*LOGICAL_RULES"):
        shd.logical_to_spec(("bogus",), (4,), mesh, where="params/x")


def _sgd_state(mesh, variables, lora=False):
    opt = optax.sgd(1.0)   # new = old - grad: the update exposes the gradient
    boxed = jax.eval_shape(lambda: toy.init_variables(CFG, jax.random.PRNGKey(0)))
    sh = st.state_shardings(boxed, opt, mesh, lora)
    return st.state_from_variables(variables, opt, sh, jax.random.PRNGKey(1), lora=lora), sh, opt


def _run(mesh, variables, step_cfg, sft, rl):
    state, sh, opt = _sgd_state(mesh, variables)
    before = jax.device_get(state.trainable)
    step = stp.make_train_step(toy.make_apply_fn(CFG), step_cfg, opt, mesh, sh,
                               sft_example=sft, rl_example=rl)
    new, metrics = step(state, shd.shard_batch(sft, mesh), shd.shard_batch(rl, mesh))
    grads = jax.tree.map(lambda a, b: a - b, before, jax.device_get(new.trainable))
    return new, metrics, grads


@needs8
@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(shape):
    variables = nn.unbox(toy.init_variables(CFG, jax.random.PRNGKey(0)))
    sft = toy.sft_batch(0, 8, 12, CFG.vocab)
    rl = toy.rl_batch(1, 2, 4, 5, 7, CFG.vocab, eos_id=3)
    cfg = stp.StepConfig(lambda_sft=1.0, lambda_rl=0.5, grad_accum=2, loss_agg="seq_mean")
    one = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    _, m1, g1 = _run(one, variables, cfg, sft, rl)
    mesh = shd.make_mesh(dict(zip(shd.MESH_AXES, shape)))
    new, m8, g8 = _run(mesh, variables, cfg, sft, rl)
    for k in ("loss", "sft_loss", "rl_loss", "grad_norm", "reward/total", "kl", "entropy"):
        np.testing.assert_allclose(float(m8[k]), float(m1[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(g1)) > 1e-4  # non-trivial
    # parameters are really sharded: per-device shard shapes
    data, fsdp, tensor = shape
    shards = shd.shard_shapes(new.trainable["params"])
    assert shards["up"] == (CFG.embed // fsdp, CFG.mlp // tensor)
    assert shards["embedding"] == (CFG.vocab // tensor, CFG.embed // fsdp)
    assert shards["q"] == (CFG.embed // fsdp, CFG.heads // tensor, CFG.head_dim)
    assert new.trainable["params"]["up"].sharding.spec == P(
        "fsdp" if fsdp > 1 else None, "tensor" if tensor > 1 else None)


@needs8
def test_optimizer_state_follows_parameter_shardings():
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state, sh = st.create_train_state(lambda r: toy.init_variables(CFG, r), opt, mesh,
                                      jax.random.PRNGKey(0), lora=False)
    adam = state.opt_state[1][0]
    assert adam.mu["params"]["up"].sharding.spec == P("fsdp", "tensor")
    assert shd.shard_shapes(adam.nu["params"]["head"]) == (8, 16)
    assert adam.count.sharding.spec == P()


@needs8
def test_batch_shardings():
    mesh = shd.make_mesh(dict(data=4, fsdp=2, tensor=1))
    b = {"input_ids": np.zeros((8, 5), np.int32), "position_ids": np.zeros((3, 8, 5), np.int32),
         "pixel_values": np.zeros((32, 6), np.float32), "odd": np.zeros((3,), np.int32)}
    sh = shd.batch_shardings(b, mesh)
    assert sh["input_ids"].spec == P(("data", "fsdp"), None)
    assert sh["position_ids"].spec == P(None, ("data", "fsdp"), None)
    assert sh["pixel_values"].spec == P(("data", "fsdp"), None)
    assert sh["odd"].spec == P()
    placed = shd.shard_batch(b, mesh)
    assert shd.shard_shapes(placed)["input_ids"] == (1, 5)


def _vlm_batches(vocab, seed=0):
    sft = toy.sft_batch(seed, 8, 12, vocab - 8)
    rl = toy.rl_batch(seed + 1, 2, 4, 5, 7, vocab - 8, eos_id=3)
    for b in (sft, rl):
        bsz, s = b["input_ids"].shape
        b["position_ids"] = np.broadcast_to(np.arange(s, dtype=np.int32), (3, bsz, s)).copy()
    return sft, rl


@needs8
def test_real_tiny_qwen2_5_vl_sharded_step_equals_single_device():
    # LoRA: adapters trained, the sharded base frozen (full fine-tuning: the toy tests above)
    lora_rank = 4
    model = pytest.importorskip("skinr1_jax.model")
    mcfg = model.tiny_config(vocab_size=64).replace(lora={"rank": lora_rank, "alpha": 8.0})
    lora = lora_rank > 0

    def apply_fn(variables, batch, rng, deterministic):
        return model.forward(mcfg, variables, batch, grid_thw=None, deterministic=deterministic,
                             rngs={"dropout": rng})[0]

    boxed = model.abstract_variables(mcfg)
    variables = model.unbox(model.init_variables(mcfg, jax.random.PRNGKey(0)))
    if lora:   # PEFT initialises lora_b to zero: perturb it so adapter gradients are generic
        variables["lora"] = jax.tree.map(lambda x: x + 0.01, variables["lora"])
    sft, rl = _vlm_batches(64)
    cfg = stp.StepConfig(lambda_sft=1.0, lambda_rl=1.0, grad_accum=2)
    out = {}
    for name, mesh in (("one", shd.make_mesh(dict(data=1, fsdp=1, tensor=1),
                                             devices=jax.devices()[:1])),
                       ("eight", shd.make_mesh(dict(data=2, fsdp=2, tensor=2)))):
        opt = optax.sgd(1.0)
        sh = st.state_shardings(boxed, opt, mesh, lora)
        state = st.state_from_variables(variables, opt, sh, jax.random.PRNGKey(1), lora=lora)
        before = jax.device_get(state.trainable)
        step = stp.make_train_step(apply_fn, cfg, opt, mesh, sh, sft_example=sft, rl_example=rl)
        new, m = step(state, shd.shard_batch(sft, mesh), shd.shard_batch(rl, mesh))
        out[name] = (m, jax.tree.map(lambda a, b: a - b, before, jax.device_get(new.trainable)),
                     new)
    (m1, g1, _), (m8, g8, new8) = out["one"], out["eight"]
    for k in ("loss", "sft_loss", "rl_loss", "grad_norm"):
        np.testing.assert_allclose(float(m8[k]), float(m1[k]), rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    gate = st.merge_variables(new8.trainable, new8.frozen)["params"]["language_model"][
        "layers_0"]["mlp"]["gate_proj"]["kernel"]
    assert gate.sharding.spec == P("fsdp", "tensor")
    assert shd.shard_shapes(gate) == (mcfg.text.hidden_size // 2, mcfg.text.intermediate_size // 2)
    if lora:
        a = new8.trainable["lora"]["language_model"]["layers_0"]["mlp"]["gate_proj"]["lora_a"]
        assert a.sharding.spec == P("fsdp", None)
