"""End to end: a miniature of the default run (configs/ci.py) through every stage, then the
artifacts: files exist, metrics finite and in range, the export reloads with the same logits,
and an interrupted SFT resumes with exactly the losses of the uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _launch(workdir: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m launch` on configs/ci.py with an XLA compilation cache, so a rerun of the
    same programs skips their compilation."""
    cmd = [sys.executable, "-m", "launch", "--config", "configs/ci.py",
           f"--config.workdir={workdir}", *args]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cache: Path) -> Path:
    workdir = tmp_path_factory.mktemp("e2e") / "wd"
    _launch(workdir, cache)
    return workdir


def test_every_stage_wrote_its_artifacts(run_dir: Path):
    for name in ("config.txt", "logs/launch.log", "trajectories.jsonl", "generate_summary.json",
                 "tokenizer/tokenizer.json", "metrics.jsonl", "results.json", "results.md",
                 "training_curves.png", "accuracy_by_level.png", "export/model_config.json",
                 "export/hf/config.json", "export/hf/model.safetensors"):
        assert (run_dir / name).exists(), name
    for model in ("base", "sft", "sft_rl"):
        assert (run_dir / "models" / model / "params").is_dir(), model
    trajectories = [json.loads(l) for l in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert {t["type"] for t in trajectories} == {"basic", "ddx_keep", "ddx_switch", "random_keep",
                                                 "random_switch"}
    assert all({"type", "label", "prompt", "response"} <= set(t) for t in trajectories)


def test_metrics_are_finite_and_in_range(run_dir: Path):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"pretrain", "sft", "rl"}
    for r in rows:
        assert math.isfinite(r["loss"]), r
        if r["stage"] == "rl":
            assert 0.0 <= r["reward/total"] <= 2.0, r
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) == {"base", "sft", "sft_rl"}
    for model, res in results.items():
        for key in ("mcq_indomain", "mcq_b_or_m", "mcq_hierarchical", "mcq_ddx", "ood",
                    "acc_level1", "acc_level2", "acc_leaf", "hier_f1", "format_rate",
                    "ddx_recall", "mean_taxonomy_reward"):
            assert 0.0 <= res[key] <= 1.0, (model, key, res[key])
        assert res["mean_tree_distance"] >= 0
        assert 0.0 <= res["ood_open"]["acc_leaf"] <= 1.0
        assert all(0.0 <= v <= 1.0 for v in res["acc_by_skin_type"].values())
        # Every share of questions carries its 95% interval, which contains it.
        for key in ("mcq_indomain", "acc_leaf", "ood_open.acc_leaf"):
            value = res["ood_open"]["acc_leaf"] if key.startswith("ood_open") else res[key]
            lo, hi = res["details"][key]["ci95"]
            assert lo <= value <= hi and res["details"][key]["n"] > 0, (model, key)
    assert "95% Wilson intervals" in (run_dir / "results.md").read_text()


def test_base_is_the_aligned_model(run_dir: Path):
    """models/base (what SFT starts from and `base` evaluates) is the random init after the
    pretrain stage's caption updates, not the init itself."""
    import jax

    from configs.ci import get_config
    from skinr1_jax.model.saved import load_model
    from skinr1_jax.stages.common import initial_variables

    cfg, base, _ = load_model(run_dir / "models" / "base")
    init = initial_variables(get_config(), cfg)
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(init))]
    assert jax.tree.structure(base) == jax.tree.structure(init)
    assert max(moved) > 0


def test_export_reloads_with_the_same_logits(run_dir: Path):
    import jax

    from skinr1_jax.model import forward, get_rope_index
    from skinr1_jax.model.saved import load_model

    cfg, exported, tok = load_model(run_dir / "export")
    _, trained, _ = load_model(run_dir / "models" / "sft_rl")
    ids = np.array([tok.encode("A scaly red plaque on the elbow.")], np.int32)
    mask = np.ones_like(ids)
    pos, _ = get_rope_index(cfg, ids, mask)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    a = np.asarray(forward(cfg, exported, batch)[0])
    b = np.asarray(forward(cfg, trained, batch)[0])
    np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(exported) == jax.tree.structure(trained)


def test_interrupted_sft_resumes_exactly(run_dir: Path, cache: Path, tmp_path: Path):
    """Drop the last SFT checkpoint (as if the run died after step 2 of 4) and rerun: steps
    3-4 must log the uninterrupted run's losses."""
    workdir = tmp_path / "wd"
    shutil.copytree(run_dir, workdir, ignore=shutil.ignore_patterns("models", "export"))
    ckpts = workdir / "checkpoints" / "sft"
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert steps[-1] == 4 and 2 in steps
    shutil.rmtree(ckpts / "4")
    before = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (workdir / "metrics.jsonl").write_text("")
    out = _launch(workdir, cache, "--stages", "sft")
    assert "resumed from step 2" in out.stdout
    after = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    want = {r["step"]: r["loss"] for r in before if r["stage"] == "sft" and r["step"] > 2}
    got = {r["step"]: r["loss"] for r in after if r["stage"] == "sft"}
    assert want and got == want


def test_resuming_under_another_config_is_refused(run_dir: Path, tmp_path: Path):
    """A checkpoint cannot continue a run whose SFT settings changed: exit 2, naming the key,
    and the checkpoint is left as it was."""
    workdir = tmp_path / "wd"
    shutil.copytree(run_dir, workdir, ignore=shutil.ignore_patterns("models", "export"))
    ckpts = workdir / "checkpoints" / "sft"
    shutil.rmtree(ckpts / "4")
    cmd = [sys.executable, "-m", "launch", "--config", "configs/ci.py",
           f"--config.workdir={workdir}", "--config.sft.learning_rate=0.01", "--stages", "sft"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "cannot resume" in out.stderr and "sft.learning_rate" in out.stderr
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())[-1] == 2
