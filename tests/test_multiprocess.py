"""Two processes x 4 CPU devices (gloo collectives over 127.0.0.1) against one process x 8:
every stage runs, and SFT and RL losses and rewards (varied: tests/multiprocess_worker.py)
equal the single-process run with fsdp across both processes, mesh (data, fsdp, tensor) =
(1, 8, 1); the 2-process run cut back to a checkpoint resumes with the uninterrupted run's
numbers on 2 processes with the data axis across them, (2, 4, 1), and on 1 process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "multiprocess_worker.py"
pytestmark = pytest.mark.slow
TIMEOUT_S = 600

OVERRIDES = (
    "--config.pretrain.steps=0", "--config.sft.steps=4", "--config.sft.batch_size=4",
    "--config.rl.steps=2", "--config.rl.batch_size=2", "--config.rl.max_new_tokens=8",
    "--config.checkpoint.every_steps=1", "--config.checkpoint.async_save=False",
    "--config.log.every_steps=1", "--config.log.tensorboard=False",
    "--config.eval.max_examples=4", "--config.eval.batch_size=8", "--config.eval.max_new_tokens=8",
    "--config.eval.models=('sft_rl',)", "--config.eval.sets=('indomain','open')",
)
COMPARED = ("loss", "sft_loss", "rl_loss", "grad_norm", "kl", "reward/total", "reward/std",
            "reward/format", "adv/nonzero_group_share", "format_rate", "mean_length")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(workdir: Path, stages: str, mesh: tuple[int, int, int], processes: int,
         cache: Path | None = None) -> float:
    """Run the stages with `processes` processes of 8 // processes devices; kill all on
    failure or timeout. Returns the wall time."""
    args = [sys.executable, str(WORKER), "--config", "configs/ci.py",
            f"--config.workdir={workdir}", f"--stages={stages}", *OVERRIDES,
            *(f"--config.mesh.{a}={n}" for a, n in zip(("data", "fsdp", "tensor"), mesh))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
    if cache is not None:   # a rerun of the same programs skips their compilation
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    port = _free_port()
    logs, procs = [], []
    t0 = time.time()
    for i in range(processes):
        penv = dict(env)
        if processes > 1:
            penv.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                        JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
        log = open(workdir.parent / f"{workdir.name}_{stages.replace(',', '_')}_{i}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(args, cwd=REPO, env=penv, stdout=log,
                                      stderr=subprocess.STDOUT))
    try:
        deadline = time.time() + TIMEOUT_S
        while any(p.poll() is None for p in procs):
            if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    tails = []
    for i, (p, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        tails.append(f"--- process {i} (rc {p.returncode}) ---\n{log.read()[-4000:]}")
        log.close()
    assert all(p.returncode == 0 for p in procs), "\n".join(tails)
    return time.time() - t0


def _metrics(workdir: Path) -> dict[tuple[str, int], dict]:
    """The last logged row of each (stage, step) (a resumed run logs its steps again)."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {(r["stage"], r["step"]): r for r in rows}


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), (what, sorted(got), sorted(want))
    for key in sorted(want):
        for name in COMPARED:
            if name in want[key]:
                np.testing.assert_allclose(got[key][name], want[key][name], rtol=2e-4, atol=2e-5,
                                           err_msg=f"{what}: {key} {name}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One XLA compilation cache for the module: a run of programs an earlier run compiled
    (same mesh, same process count) skips their compilation."""
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache: Path) -> Path:
    """One process x 8 devices, mesh (1, 8, 1), from dataset build to evaluation."""
    workdir = tmp_path_factory.mktemp("mp") / "ref"
    _run(workdir, "generate,sft,rl,eval", (1, 8, 1), 1, cache=cache)
    return workdir


@pytest.fixture(scope="module")
def two_processes(reference: Path, cache: Path) -> Path:
    """Both processes build the dataset and tokenizer (process 0 once), train and evaluate with
    fsdp over both processes (parameters span hosts), mesh (1, 8, 1); only process 0 writes
    the files."""
    workdir = reference.parent / "two_1_8_1"
    seconds = _run(workdir, "generate,sft,rl,eval,export", (1, 8, 1), 2, cache=cache)
    print(f"2 processes, generate..export: {seconds:.0f}s")
    return workdir


def test_two_processes_run_every_stage_as_one(reference: Path, two_processes: Path):
    want = _metrics(reference)
    assert any(r["reward/std"] > 0 for (stage, _), r in want.items() if stage == "rl")
    _assert_same(_metrics(two_processes), want, "2x4 devices, mesh (1,8,1)")
    assert json.loads((two_processes / "results.json").read_text()) == \
        json.loads((reference / "results.json").read_text())
    for name in ("config.txt", "trajectories.jsonl", "tokenizer/tokenizer.json",
                 "models/sft_rl/model_config.json", "export/hf/model.safetensors"):
        assert (two_processes / name).exists(), name
    assert not (two_processes / "logs" / "launch_0.log").exists()
    assert (two_processes / "logs" / "launch_1.log").exists()


def test_two_process_checkpoint_resumes_on_another_mesh_and_on_one_process(
        reference: Path, two_processes: Path, cache: Path):
    """The RL stage of the 2-process run, cut back to its step-1 checkpoint (policy, optimizer,
    RNG, RL and joint-SFT iterator positions), resumes on 2 processes with the data axis
    across them, mesh (2, 4, 1), and on 1 process of 8 devices, with the uninterrupted numbers
    (the data position saved is global, so a change of process count continues the same
    stream)."""
    want = {("rl", 2): _metrics(reference)[("rl", 2)]}
    steps = sorted(int(p.name) for p in (two_processes / "checkpoints" / "rl").iterdir()
                   if p.name.isdigit())
    assert steps == [1, 2], steps
    workdir = reference.parent / "resumed"
    shutil.copytree(two_processes, workdir,
                    ignore=shutil.ignore_patterns("export", "logs", "metrics.jsonl"))
    shutil.rmtree(workdir / "checkpoints" / "rl" / "2")
    saved = reference.parent / "rl_step1"
    shutil.copytree(workdir / "checkpoints" / "rl", saved)
    for processes, mesh in ((2, (2, 4, 1)), (1, (1, 8, 1))):
        shutil.rmtree(workdir / "checkpoints" / "rl")
        shutil.copytree(saved, workdir / "checkpoints" / "rl")
        shutil.rmtree(workdir / "models" / "sft_rl")
        (workdir / "metrics.jsonl").unlink(missing_ok=True)
        seconds = _run(workdir, "rl", mesh, processes, cache=cache)
        print(f"{processes} process(es), mesh {mesh}, resumed rl: {seconds:.0f}s")
        resumed = _metrics(workdir)
        assert set(resumed) == {("rl", 2)}, sorted(resumed)
        _assert_same(resumed, want, f"2 -> {processes} process resume, mesh {mesh}")
        assert (workdir / "models" / "sft_rl" / "model_config.json").exists()
