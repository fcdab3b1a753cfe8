"""rl.mu > 1 in the rl stage: each rollout batch serves mu updates, the ratio is taken against
the sampling policy's log-probs of the sampled tokens, and a small run trains through several
cycles."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from skinr1_jax.stages import rl

REPO = Path(__file__).resolve().parent.parent


def test_each_rollout_batch_serves_mu_updates():
    src = object.__new__(rl.RolloutSource)       # the cycle logic alone, no model
    src.mu, src._rollout = 3, None
    sfts = iter(range(100))
    src.sft_source = SimpleNamespace(next=lambda: next(sfts))
    sampled = []
    src._rollout_batch = lambda state, step: (sampled.append(step) or ({"rollout": step}, {}))
    got = [src.batches(None, s) for s in range(7)]
    assert [b[1]["rollout"] for b in got] == [0, 0, 0, 3, 3, 3, 6] and sampled == [0, 3, 6]
    assert [b[0] for b in got] == list(range(7))             # the SFT term draws every update
    src._rollout = None                                        # resumed mid-cycle: fresh rollouts
    assert src.batches(None, 4)[1]["rollout"] == 4


@pytest.mark.slow
def test_mu_2_runs_in_the_rl_stage_against_the_sampled_logprobs(tmp_path):
    workdir = tmp_path / "wd"
    overrides = [f"--config.workdir={workdir}", "--config.rl.init_from=base", "--config.rl.mu=2",
                 "--config.rl.steps=4", "--config.rl.reward.check_weight=0.5"]
    cmd = [sys.executable, "-m", "launch", "--config", "configs/ci.py", "--stages=generate,rl",
           *overrides]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["stage"] == "rl"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["rl_loss"]) for r in rows)
    for first, second in ((rows[0], rows[1]), (rows[2], rows[3])):   # one rollout batch each
        for k in ("reward/total", "format_rate", "mean_length", "completion_len"):
            assert first[k] == second[k], k
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0.0      # the policy moved within the cycle
    assert all(0.0 <= r["reward/check"] <= 0.5 for r in rows)  # the lookup reward's component
    assert (workdir / "models" / "sft_rl" / "params").is_dir()

    # The old_logprobs of a rollout batch are the sampling policy's log-probs of its tokens,
    # from the step's own forward (so the first update of a cycle has ratio exactly 1).
    from configs.ci import get_config
    from skinr1_jax.model import abstract_variables
    from skinr1_jax.stages import common
    from skinr1_jax.stages.loop import apply_fn_for
    from skinr1_jax.train import sharding
    from skinr1_jax.train.step import make_logprob_fn

    config = get_config()
    config.workdir, config.rl.init_from, config.rl.mu = str(workdir), "base", 2
    config.rl.beta = 0.0                     # no reference model needed for this check
    tokenizer = common.load_tokenizer(config, workdir)
    model_cfg = common.model_config(config, tokenizer)
    policy = rl.initial_policy(config, workdir, model_cfg, tokenizer)
    enc = common.encoder(config, tokenizer, model_cfg)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    source = rl.RolloutSource(config, workdir, model_cfg=model_cfg, tokenizer=tokenizer, enc=enc,
                              mesh=mesh, ref_variables=None, logprob_fn=None)
    var_sh = sharding.param_shardings(abstract_variables(model_cfg), mesh)
    source.logprob_fn = make_logprob_fn(apply_fn_for(model_cfg, source.grid),
                                        float(config.rl.temperature), mesh, var_sh)
    policy = jax.device_put(policy, var_sh)
    _, batch, _ = source.batches(SimpleNamespace(variables=policy), 0)
    assert source.batches(SimpleNamespace(variables=None), 1)[1] is batch      # reused, no sampling
    forward = np.asarray(source.logprob_fn(policy, common.step_arrays(batch)))
    mask = np.asarray(batch["completion_mask"]).astype(bool)
    assert mask.any()
    np.testing.assert_allclose(np.asarray(batch["old_logprobs"])[mask], forward[mask], rtol=1e-6)
    assert source.parser.malignancy_classes == ("benign", "malignant", "precancerous_in_situ",
                                                "non_neoplastic")

    # The lookup reward's input: each completion's option check scored against the options of
    # the question its prompt row asks (several draws of options per image here).
    from skinr1_jax.data.sft_mix import option_check

    config.rl.reward.check_weight, config.rl.option_draws = 0.5, 2
    source = rl.RolloutSource(config, workdir, model_cfg=model_cfg, tokenizer=tokenizer, enc=enc,
                              mesh=mesh, ref_variables=None, logprob_fn=None)
    prompts = next(source.iterator)
    g = int(config.rl.num_generations)
    asked = [source.questions[int(i)] for i in prompts["question_index"]]
    assert [q.example_id for q in asked] == list(prompts["example_ids"])
    texts = [f"<thinking>x.{option_check(q, source.taxonomy)}</thinking>"
             f"<final diagnosis>{'ABCD'[(q.answer + j) % 4]}: y</final diagnosis>"
             for q in asked for j in range(g)]
    rows = len(texts)
    host = source._host_batch(prompts, np.zeros((rows, 4), np.int32),
                              np.zeros((rows, 4), np.float32), np.ones(rows, np.int32), texts)
    # Every line copied; only the first completion of each group answers what its check says.
    np.testing.assert_allclose(host["check_score"], np.tile([1.0] + [0.5] * (g - 1), rows // g))
