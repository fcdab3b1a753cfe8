"""The joint step: compile counts per variant, exact accumulation, LoRA freezing, the
reference log-prob function, AOT memory report; and the metrics writers."""

import dataclasses
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from skinr1_jax.train import logging as tlog
from skinr1_jax.train import losses, optim
from skinr1_jax.train import sharding as shd
from skinr1_jax.train import state as st
from skinr1_jax.train import step as stp
from skinr1_jax.train import toy

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
CFG = toy.ToyConfig()


def setup(step_cfg, *, lora=False, mesh_shape=None, opt=None, seed=0):
    """Step-logic tests run on one device (fast compiles); test_sharding covers meshes."""
    cfg = toy.ToyConfig(lora_rank=4, lora_dropout=0.1) if lora else CFG
    if mesh_shape is None:
        mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    else:
        mesh = shd.make_mesh(dict(zip(shd.MESH_AXES, mesh_shape)))
    opt = opt or optim.make_optimizer(1e-2, 20, 0.0)
    state, sh = st.create_train_state(lambda r: toy.init_variables(cfg, r), opt, mesh,
                                      jax.random.PRNGKey(seed), lora=lora)
    sft = toy.sft_batch(0, 8, 12, cfg.vocab) if step_cfg.sft else None
    rl = (toy.rl_batch(1, 2, 4, 5, 7, cfg.vocab, eos_id=3, with_ref=step_cfg.beta != 0,
                       with_old=step_cfg.mu > 1) if step_cfg.rl else None)
    step = stp.make_train_step(toy.make_apply_fn(cfg), step_cfg, opt, mesh, sh,
                               sft_example=sft, rl_example=rl)
    put = lambda b: None if b is None else shd.shard_batch(b, mesh)
    return step, state, sh, mesh, put(sft), put(rl), cfg


VARIANTS = {
    "sft": stp.StepConfig(lambda_sft=1.0, lambda_rl=0.0),
    "rl": stp.StepConfig(lambda_sft=0.0, lambda_rl=1.0),
    "joint": stp.StepConfig(lambda_sft=0.5, lambda_rl=1.0, grad_accum=2),
    "rl_dapo": stp.StepConfig(lambda_sft=0.0, lambda_rl=1.0, mu=2, clip_high=0.28, beta=0.0,
                              loss_agg="token_mean", scale_std=False),
}


@needs8
@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_compiles_once_and_trains(name):
    step, state, _, _, sft, rl, _ = setup(VARIANTS[name],
                                          mesh_shape=(2, 2, 2) if name == "joint" else None)
    losses_seen = []
    for _ in range(3):
        state, metrics = step(state, sft, rl)
        losses_seen.append(float(metrics["loss"]))
    assert step.cache_size() == 1
    assert int(state.step) == 3
    assert all(np.isfinite(float(v)) for v in metrics.values())
    if VARIANTS[name].sft:
        assert losses_seen[2] < losses_seen[0]          # lr 0 at step 0, then learns
        assert "rl_loss" not in metrics or VARIANTS[name].rl
    if VARIANTS[name].rl:
        assert 0.0 <= float(metrics["adv/nonzero_group_share"]) <= 1.0
        assert {"reward/format", "reward/answer", "reward/malignancy", "kl", "clip_frac",
                "entropy"} <= set(metrics)
    if not VARIANTS[name].rl:
        assert "reward/total" not in metrics


def test_pure_rl_with_equal_rewards_does_not_move_and_no_nan():
    cfg = stp.StepConfig(lambda_sft=0.0, lambda_rl=1.0, beta=0.0)
    step, state, _, _, _, rl, _ = setup(cfg, opt=optax.sgd(1.0))
    rl = dict(rl)
    rl["format_ok"] = jnp.ones_like(rl["format_ok"])
    rl["option"] = jnp.full_like(rl["option"], -1)
    rl["malignancy_pred"] = jnp.full_like(rl["malignancy_pred"], -1)
    before = jax.device_get(state.trainable)
    state, metrics = step(state, None, shd.shard_batch(jax.device_get(rl), step.mesh))
    assert float(metrics["adv/nonzero_group_share"]) == 0.0
    assert float(metrics["grad_norm"]) == 0.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.trainable))):
        np.testing.assert_array_equal(a, b)


def test_accumulation_equals_big_batch():
    # token_mean: the denominator must be the batch's global token count (seq_mean is
    # checked the same way, across devices, in test_sharding)
    agg = "token_mean"
    results = []
    for accum in (1, 4):
        cfg = stp.StepConfig(lambda_sft=0.7, lambda_rl=1.0, grad_accum=accum, loss_agg=agg)
        step, state, _, _, sft, rl, _ = setup(cfg, opt=optax.sgd(1.0))
        new, m = step(state, sft, rl)
        results.append((jax.device_get(new.trainable), m))
    (p1, m1), (p4, m4) = results
    for k in ("loss", "sft_loss", "rl_loss", "grad_norm", "kl", "entropy"):
        np.testing.assert_allclose(float(m4[k]), float(m1[k]), rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lora_trains_only_adapters():
    cfg = stp.StepConfig(lambda_sft=1.0, lambda_rl=0.0)
    step, state, _, _, sft, _, _ = setup(cfg, lora=True)
    assert set(state.trainable) == {"lora"} and set(state.frozen) == {"params"}
    n_lora = sum(x.size for x in jax.tree.leaves(state.trainable))
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert n_opt == 2 * n_lora            # Adam moments for the adapters only
    base = jax.device_get(state.frozen)
    lora0 = jax.device_get(state.trainable)
    for _ in range(3):
        state, _ = step(state, sft, None)
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(jax.device_get(state.frozen))):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(lora0["lora"]["up_b"], jax.device_get(state.trainable)["lora"]["up_b"])


def test_logprob_fn_matches_direct_computation():
    cfg = stp.StepConfig(lambda_sft=0.0, lambda_rl=1.0)
    step, state, sh, mesh, _, rl, tcfg = setup(cfg)
    var_sh = st.merge_variables(sh.trainable, sh.frozen)
    fn = stp.make_logprob_fn(toy.make_apply_fn(tcfg), 0.7, mesh, var_sh)
    lp = np.asarray(fn(state.variables, rl))
    logits = toy.make_apply_fn(tcfg)(jax.device_get(state.variables), jax.device_get(rl),
                                     jax.random.PRNGKey(0), True)
    expect = np.asarray(losses.token_logprobs(logits, jnp.asarray(jax.device_get(rl)["input_ids"]), 0.7))
    np.testing.assert_allclose(lp, expect, rtol=1e-5, atol=1e-5)


def test_inner_updates_on_one_rollout_batch_lower_its_loss():
    # rl.mu = 3: three updates on the same rollouts, the ratio taken against the log-probs the
    # rollout was sampled with (here: the starting policy's, at the sampling temperature).
    t = 0.7
    cfg = stp.StepConfig(lambda_sft=0.0, lambda_rl=1.0, mu=3, beta=0.0, temperature=t,
                         clip_low=0.2, clip_high=0.28)
    step, state, sh, mesh, _, rl, tcfg = setup(cfg, opt=optax.sgd(0.5))
    on_policy, _, _, _, _, _, _ = setup(dataclasses.replace(cfg, mu=1), opt=optax.sgd(0.5))
    var_sh = st.merge_variables(sh.trainable, sh.frozen)
    rl = dict(jax.device_get(rl))
    rl["old_logprobs"] = np.asarray(stp.make_logprob_fn(toy.make_apply_fn(tcfg), t, mesh, var_sh)(
        state.variables, rl))
    without_old = shd.shard_batch({k: v for k, v in rl.items() if k != "old_logprobs"}, mesh)
    first = on_policy(jax.tree.map(jnp.copy, state), None, without_old)[1]
    rl = shd.shard_batch(rl, mesh)
    seen = []
    for _ in range(cfg.mu):
        state, metrics = step(state, None, rl)
        seen.append({k: float(v) for k, v in metrics.items()})
    assert float(jax.device_get(metrics["adv/nonzero_group_share"])) > 0
    # update 1 is the on-policy update (ratio 1, nothing clipped); later ones lower the loss
    np.testing.assert_allclose(seen[0]["rl_loss"], float(first["rl_loss"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen[0]["grad_norm"], float(first["grad_norm"]), rtol=1e-4)
    assert seen[0]["clip_frac"] == 0.0
    assert seen[2]["rl_loss"] < seen[1]["rl_loss"] < seen[0]["rl_loss"], [m["rl_loss"] for m in seen]


def test_missing_inputs_are_clear_errors():
    mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    opt = optim.make_optimizer(1e-3, 10)
    state, sh = st.create_train_state(lambda r: toy.init_variables(CFG, r), opt, mesh,
                                      jax.random.PRNGKey(0), lora=False)
    rl = toy.rl_batch(0, 2, 4, 3, 4, CFG.vocab, eos_id=3, with_ref=False)
    with pytest.raises(KeyError, match="ref_logprobs"):
        stp.make_train_step(toy.make_apply_fn(CFG), stp.StepConfig(lambda_sft=0, lambda_rl=1),
                            opt, mesh, sh, rl_example=rl)
    with pytest.raises(ValueError, match="sft_example"):
        stp.make_train_step(toy.make_apply_fn(CFG), stp.StepConfig(), opt, mesh, sh)
    with pytest.raises(ValueError, match="lambda"):
        stp.StepConfig(lambda_sft=0.0, lambda_rl=0.0)
    with pytest.raises(ValueError, match="lora"):
        st.split_variables({"params": {}}, lora=True)


def test_aot_compile_reports_memory_and_fails_fast():
    cfg = stp.StepConfig()
    step, state, sh, _, sft, _, _ = setup(cfg)
    abstract = stp.abstract_like(state, sh)
    logs = []
    compiled, report = stp.compile_step(step, abstract, sft, None, log=logs.append)
    assert report["argument"] > 0 and report["total"] > 0 and "per device" in logs[0]
    new, metrics = compiled(state, sft, None)
    assert np.isfinite(float(metrics["loss"]))
    with pytest.raises(MemoryError, match="needs .* per device"):
        stp.compile_step(step, abstract, sft, None, memory_limit_bytes=1024, log=logs.append)


def test_step_config_from_project_config():
    from configs.default import get_config
    c = get_config()
    c.rl.lambda_sft, c.rl.beta, c.rl.temperature, c.rl.num_generations = 0.25, 0.5, 0.7, 3
    s = stp.StepConfig.from_config(c, "rl")
    assert (s.lambda_sft, s.lambda_rl, s.beta, s.temperature) == (0.25, 1.0, 0.5, 0.7)
    assert s.num_generations == 3
    assert s.reward.variant == "hierarchical" and s.reward.malignancy_weight == 0.25
    assert stp.StepConfig.from_config(c, "sft").rl is False


# ---- logging -----------------------------------------------------------------------------------

def read_tfrecords(path):
    out = []
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        (hcrc,) = struct.unpack("<I", data[i + 8:i + 12])
        assert hcrc == tlog.masked_crc32c(data[i:i + 8])
        rec = data[i + 12:i + 12 + n]
        (dcrc,) = struct.unpack("<I", data[i + 12 + n:i + 16 + n])
        assert dcrc == tlog.masked_crc32c(rec)
        out.append(rec)
        i += 16 + n
    return out


def test_crc32c_known_vector():
    assert tlog.crc32c(b"123456789") == 0xE3069283


def test_metrics_writer_jsonl_and_tensorboard(tmp_path):
    w = tlog.MetricsWriter(tmp_path, "sft")
    w.write(10, {"loss": jnp.float32(1.5), "reward/total": 0.25})
    w.write(20, {"loss": float("nan")})
    w.close()
    rows = tlog.read_metrics(tmp_path, "sft")
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[0]["stage"] == "sft" and rows[0]["loss"] == 1.5 and rows[1]["loss"] is None
    for line in open(os.path.join(tmp_path, "metrics.jsonl")):
        json.loads(line)
    files = os.listdir(tmp_path / "tb" / "sft")
    assert len(files) == 1 and files[0].startswith("events.out.tfevents.")
    recs = read_tfrecords(tmp_path / "tb" / "sft" / files[0])
    assert len(recs) == 3 and b"brain.Event:2" in recs[0]
    assert b"loss" in recs[1] and struct.pack("<f", 1.5) in recs[1]
    assert b"reward/total" in recs[1] and b"loss" not in recs[2]   # NaN skipped


def test_progress_bar_runs():
    bar = tlog.ProgressBar(3, "sft", disable=True)
    for _ in range(3):
        bar.update(1, {"loss": 0.5, "reward/total": 1.0})
    bar.close()


def test_multiprocess_detection_from_environment():
    from skinr1_jax.train import distributed as dist
    assert dist.multiprocess_env({}) is None
    assert dist.multiprocess_env({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    assert dist.multiprocess_env({"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3"}) == "tpu"
    assert dist.multiprocess_env({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert dist.multiprocess_env({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
    assert dist.multiprocess_env({"JAX_COORDINATOR_ADDRESS": "h0:1234"}) == "coordinator"
    assert dist.multiprocess_env({"SKINR1_DISTRIBUTED": "1"}) == "explicit"
    with pytest.raises(RuntimeError, match="JAX_NUM_PROCESSES"):
        dist.maybe_initialize_distributed({"JAX_COORDINATOR_ADDRESS": "h0:1234"})
    assert dist.maybe_initialize_distributed({}) is False
    assert dist.data_shard() == (0, 1) and dist.is_main_process()
    dist.barrier("one process: a no-op")
    with dist.main_process_first("one process") as main:
        assert main
