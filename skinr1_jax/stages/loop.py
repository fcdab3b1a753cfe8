"""The training loop shared by the `pretrain`, `sft` and `rl` stages: mesh, sharded state, the
jitted joint step compiled ahead of time, orbax checkpoints with exact resume, progress and
metrics.

A stage supplies a `BatchSource`: it turns (state, step) into the step's SFT and/or RL batch
and owns the data iterators whose positions are saved with every checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import jax
import numpy as np
from ml_collections import ConfigDict

from skinr1_jax.config import ConfigError
from skinr1_jax.model import abstract_variables, forward
from skinr1_jax.model.vlm import forward_grouped
from skinr1_jax.model.hf_io import flatten_tree
from skinr1_jax.train import checkpoint as ckpt
from skinr1_jax.train import logging as tlog
from skinr1_jax.train import optim, sharding
from skinr1_jax.train import state as tstate
from skinr1_jax.train import step as tstep

log = logging.getLogger(__name__)

# Config sections that decide a stage's updates (its inputs included): a checkpoint written
# under other values cannot continue this run, so resuming from it is refused. The mesh,
# logging, checkpointing and evaluation settings may change between runs.
RESUME_SECTIONS = {
    "pretrain": ("seed", "data", "model", "pretrain"),
    "sft": ("seed", "data", "model", "generate", "pretrain", "sft"),
    "rl": ("seed", "data", "model", "generate", "pretrain", "sft", "rl"),
}


class BatchSource(Protocol):
    def batches(self, state: tstate.TrainState, step: int
                ) -> tuple[dict | None, dict | None, dict[str, float]]: ...

    def get_state(self) -> dict[str, int]: ...

    def restore(self, data_state: Mapping[str, int]) -> None: ...


def apply_fn_for(model_cfg: Any, grid: tuple[int, int, int] | None) -> Callable:
    """The model as the step sees it. Every row carries one image of the same grid (fixed
    image size), so the static grid tuple follows from the row count of each micro-batch."""

    def apply_fn(variables, batch, rng, deterministic, shared_prompt=None):
        rows = batch["input_ids"].shape[0]
        grid_thw = (grid,) * rows if "pixel_values" in batch else None
        kw = dict(grid_thw=grid_thw, deterministic=deterministic, rngs={"dropout": rng})
        if shared_prompt is not None:   # (groups, prompt length): see train/step.py
            groups, prompt_len = shared_prompt
            return forward_grouped(model_cfg, variables, batch, groups=groups,
                                   prompt_len=prompt_len, **kw)
        return forward(model_cfg, variables, batch, **kw)[0]

    return apply_fn


def make_optimizer(config: ConfigDict, mesh: Any, learning_rate: float, total_steps: int,
                   warmup_ratio: float, fused: bool | None = None) -> Any:
    """Both stages' optimizer from config.sft's settings: fused (one flat AdamW) when
    sft.fused_optimizer is set and `mesh` replicates the parameters, unless `fused` says."""
    if fused is None:
        fused = bool(config.sft.fused_optimizer) and sharding.replicates_parameters(mesh)
    return optim.make_optimizer(learning_rate, total_steps, warmup_ratio,
                                float(config.sft.weight_decay), float(config.sft.grad_clip),
                                fused=fused)


def restore_state(manager: ckpt.CheckpointManager, state: tstate.TrainState,
                  shardings: tstate.TrainState, optimizer: Any, config: ConfigDict, mesh: Any,
                  step: int) -> ckpt.Restored:
    """Checkpoint `step` restored onto `state`'s layout and shardings, whichever AdamW
    implementation wrote it (a run may resume on a mesh that picks the other one)."""
    flat = manager.holds_flat_optimizer_state(step)
    if flat == isinstance(optimizer, optim.FusedTransformation):
        return manager.restore(state, step=step)
    saved_opt = make_optimizer(config, mesh, 1.0, 1, 0.0, fused=flat)
    abstract = jax.eval_shape(saved_opt.init, state.trainable)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    saved_sh = (jax.tree.map(lambda _: replicated, abstract) if flat else
                sharding.opt_state_shardings(saved_opt, state.trainable, shardings.trainable, mesh))
    target = state.replace(opt_state=jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, saved_sh))
    restored = manager.restore(target, step=step)
    opt_state = jax.jit(optim.convert_state, static_argnums=2,
                        out_shardings=shardings.opt_state)(
        restored.state.opt_state, restored.state.trainable, optimizer)
    return replace(restored, state=restored.state.replace(opt_state=opt_state))


@dataclass
class TrainResult:
    variables: Any
    steps: int
    seconds: float
    last_metrics: dict[str, float]


def train(stage: str, config: ConfigDict, workdir: Path, *, model_cfg: Any, variables: Any,
          grid: tuple[int, int, int] | None, source: BatchSource, step_cfg: tstep.StepConfig,
          steps: int, learning_rate: float, warmup_ratio: float, example_batches: tuple,
          credit: np.ndarray | None = None) -> TrainResult:
    """Run `steps` updates of `stage`, resuming from <workdir>/checkpoints/<stage> if present."""
    lora = model_cfg.lora.rank > 0
    mesh = sharding.make_mesh(config.mesh)
    optimizer = make_optimizer(config, mesh, learning_rate, max(steps, 1), warmup_ratio)
    shardings = tstate.state_shardings(abstract_variables(model_cfg), optimizer, mesh, lora)
    state = tstate.state_from_variables(variables, optimizer, shardings,
                                        jax.random.key(config.seed), lora=lora)
    # The sources hand over this process's block of each batch; the step's input shardings
    # follow the global shapes (a small per-process block must not decide them).
    sft_example, rl_example = (None if b is None else sharding.global_shapes(b)
                               for b in example_batches)
    train_step = tstep.make_train_step(apply_fn_for(model_cfg, grid), step_cfg, optimizer, mesh,
                                       shardings, sft_example=sft_example, rl_example=rl_example,
                                       credit=credit)
    manager = ckpt.CheckpointManager(workdir / "checkpoints" / stage,
                                     every_steps=int(config.checkpoint.every_steps),
                                     keep=int(config.checkpoint.keep),
                                     best_metric=str(config.checkpoint.best_metric),
                                     async_save=bool(config.checkpoint.async_save))
    start = 0
    if (latest := manager.latest_step()) is not None:
        # Checked before restoring: a changed setting can change the state's layout (e.g.
        # sft.fused_optimizer), which the restore would report as a mismatched checkpoint.
        check_resumable(stage, manager.config_text(latest), config, manager.directory)
        restored = restore_state(manager, state, shardings, optimizer, config, mesh, latest)
        state, start = restored.state, restored.step
        source.restore(restored.data_state)
        print(f"[{stage}] resumed from step {start} ({manager.directory})")
    from skinr1_jax.train.distributed import is_main_process

    writer = tlog.MetricsWriter(workdir, stage, tensorboard=bool(config.log.tensorboard),
                                is_main_process=is_main_process())
    bar = tlog.ProgressBar(steps, stage, initial=start)
    t0 = time.time()
    metrics: dict[str, float] = {}
    compiled: dict[tuple, Any] = {}
    try:
        for step in range(start, steps):
            sft_batch, rl_batch, extra = source.batches(state, step)
            # Host blocks are assembled into global arrays; arrays already on the mesh stay.
            sft_batch = None if sft_batch is None else sharding.shard_batch(sft_batch, mesh)
            rl_batch = None if rl_batch is None else sharding.shard_batch(rl_batch, mesh)
            # One ahead-of-time executable per input shape: RL batches have one, length-bucketed
            # SFT batches one per bucket used.
            shapes = tuple(x.shape for x in jax.tree.leaves((sft_batch, rl_batch)))
            if shapes not in compiled:
                compiled[shapes] = _compile(stage, train_step, state, sft_batch, rl_batch)
            with sharding.mesh_context(mesh):
                state, step_metrics = compiled[shapes](state, sft_batch, rl_batch)
            done = step + 1
            if done % int(config.log.every_steps) == 0 or done == steps:
                metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                metrics.update(extra)
                writer.write(done, metrics)
            bar.update(1, metrics)
            if manager.should_save(done) or done == steps:
                manager.save(done, state, data_state=source.get_state(),
                             config_text=config.to_json(), metrics=metrics or None)
                if manager.preempted:
                    print(f"[{stage}] SIGTERM: saved step {done}; exiting")
                    raise SystemExit(143)
    finally:
        bar.close()
        manager.close()
        writer.close()
    # The variables stay on the mesh in their shardings (they may span hosts): save_model
    # writes them collectively and RL samples with them in place.
    variables = tstate.merge_variables(state.trainable, state.frozen)
    return TrainResult(variables, steps, time.time() - t0, metrics)


def _leaves(config: dict[str, Any], section: str) -> dict[str, Any]:
    """{dotted key: value} of one top-level config section (a scalar section is one key)."""
    value = config.get(section)
    if not isinstance(value, dict):
        return {section: value}
    return {".".join((section, *path)): v for path, v in flatten_tree(value)}


def check_resumable(stage: str, saved_text: str, config: ConfigDict, directory: Path) -> None:
    """Refuse, naming the keys, to resume `stage` from a checkpoint whose config differs from
    `config` in a section that shapes the stage's updates (see RESUME_SECTIONS). Checkpoints
    without a saved config pass."""
    if not saved_text:
        return
    saved, now = json.loads(saved_text), json.loads(config.to_json())
    changed = []
    for section in RESUME_SECTIONS.get(stage, ()):
        a, b = _leaves(saved, section), _leaves(now, section)
        changed += [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
    if changed:
        raise ConfigError(f"[{stage}] cannot resume from {directory}: it was written with a "
                         f"different config ({'; '.join(changed[:6])}"
                         f"{'; ...' if len(changed) > 6 else ''}). Restore those values or use "
                         "a new workdir.")


def _compile(stage: str, train_step, state, sft_batch, rl_batch):
    """AOT-compile the step for these inputs' shapes and report compile time and per-device
    memory (fails fast, naming the figures, when the step cannot fit the device)."""
    t = time.time()
    compiled, report = tstep.compile_step(train_step, state, sft_batch, rl_batch,
                                          log=lambda s: None)
    mem = f", {report['total'] / 2**20:.0f} MiB per device" if report else ""
    length = "" if rl_batch is not None else f" for length {sft_batch['input_ids'].shape[1]}"
    print(f"[{stage}] step compiled{length} in {time.time() - t:.1f}s{mem}")
    return compiled


def restore_variables(config: ConfigDict, workdir: Path, stage: str, step: int, *,
                      model_cfg: Any, variables: Any) -> Any:
    """The model variables of checkpoint `step` of `stage` (e.g. RL from the epoch-4 SFT
    checkpoint, as the paper does), on the mesh in their shardings."""
    lora = model_cfg.lora.rank > 0
    mesh = sharding.make_mesh(config.mesh)
    # Same transformation chain as training, so the saved optimizer state has the same tree.
    optimizer = make_optimizer(config, mesh, 1.0, 1, 0.0)
    shardings = tstate.state_shardings(abstract_variables(model_cfg), optimizer, mesh, lora)
    target = tstate.state_from_variables(variables, optimizer, shardings, jax.random.key(0),
                                         lora=lora)
    manager = ckpt.CheckpointManager(workdir / "checkpoints" / stage, every_steps=1,
                                     handle_sigterm=False)
    try:
        restored = manager.restore(target, step=step)
    finally:
        manager.close()
    return tstate.merge_variables(restored.state.trainable, restored.state.frozen)
