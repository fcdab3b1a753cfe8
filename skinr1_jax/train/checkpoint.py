"""Orbax checkpoints: training state with exact resume, and parameter-only exports.

A training checkpoint at step s is the directory `<dir>/<s>/` holding three items:
  state   the TrainState minus the frozen base (unless saved with include_frozen): step,
          trainable variables, optimizer state, RNG;
  data    the input iterator's state (a small dict of ints), JSON;
  config  the run's config as text, JSON.
Orbax writes each step into `<s>.orbax-checkpoint-tmp-*` and renames it when complete, so a
run killed during a save leaves only a temporary directory that is never listed: resume picks
the last complete step.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from skinr1_jax.train import optim
from skinr1_jax.train.state import TrainState


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the run."""


@dataclasses.dataclass
class Restored:
    step: int
    state: TrainState
    data_state: dict[str, int]


def _abstract(tree: Any) -> Any:
    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
    return jax.tree.map(one, tree)


def _state_tree(state: TrainState, include_frozen: bool) -> dict[str, Any]:
    tree = {"step": state.step, "trainable": state.trainable, "opt_state": state.opt_state,
            "rng": state.rng}
    if include_frozen:
        tree["frozen"] = state.frozen
    return tree


class CheckpointManager:
    """Saves every `every_steps` steps (async), at the end (`force=True`) and on SIGTERM; keeps
    the last `keep` checkpoints plus the best one by `best_metric` (when set)."""

    def __init__(self, directory: str | os.PathLike, *, every_steps: int, keep: int = 2,
                 best_metric: str = "", best_mode: str = "max", async_save: bool = True,
                 handle_sigterm: bool = True):
        if every_steps <= 0:
            raise ValueError(f"checkpoint.every_steps={every_steps}: must be positive")
        if keep <= 0:
            raise ValueError(f"checkpoint.keep={keep}: must be positive")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode={best_mode!r}: expected 'max' or 'min'")
        self.directory = os.path.abspath(os.fspath(directory))
        self.every_steps = every_steps
        self.best_metric = best_metric
        self._best_mode = best_mode
        policies: list[Any] = [ocm.LatestN(n=keep)]
        if best_metric:
            policies.append(ocm.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                                      reverse=best_mode == "min",
                                      keep_checkpoints_without_metrics=False))
        # best_fn is set only so orbax writes the metrics to disk (retention after a restart);
        # which steps are kept is decided by the preservation policy alone.
        options = ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=async_save,
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode=best_mode)
        # Handlers named up front: without them a manager that has not saved yet (a resumed
        # process) reads no item metadata, and so could not tell what a checkpoint holds.
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler()})
        self._preempted = threading.Event()
        self._previous_handler = None
        if handle_sigterm and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        # Only flag it: the loop saves at the next step boundary and exits.
        self._preempted.set()

    @property
    def preempted(self) -> bool:
        """True once SIGTERM arrived (TPU preemption): save now and stop."""
        return self._preempted.is_set()

    def should_save(self, step: int) -> bool:
        return step % self.every_steps == 0 or self.preempted

    def save(self, step: int, state: TrainState, *, data_state: Mapping[str, int],
             config_text: str = "", metrics: Mapping[str, float] | None = None,
             include_frozen: bool = False, force: bool = True) -> bool:
        """Start saving step `step` (async); returns whether a save started."""
        bad = {k: v for k, v in data_state.items() if not isinstance(v, int)}
        if bad:
            raise TypeError(f"data iterator state must be a dict of ints; bad entries {bad}")
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_state_tree(state, include_frozen)),
            data=ocp.args.JsonSave(dict(data_state)),
            config=ocp.args.JsonSave({"text": config_text}))
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self._manager.save(step, args=args, metrics=metrics, force=force)

    def all_steps(self) -> list[int]:
        """Complete checkpoints, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The kept step with the best `best_metric` (None without one or without metrics)."""
        if not self.best_metric:
            return None
        scored = [(m[self.best_metric], s) for s in self.all_steps()
                  if (m := self._manager.metrics(s)) and self.best_metric in m]
        if not scored:
            return None
        pick = max if self._best_mode == "max" else min
        return pick(scored)[1]

    def holds_flat_optimizer_state(self, step: int) -> bool:
        """Whether `step` was written by the fused optimizer (flat count / mu / nu state,
        `optim.FusedAdamWState`) rather than a per-parameter optax chain."""
        opt = self._state_metadata(step).get("opt_state")
        return isinstance(opt, Mapping) and set(opt) == set(optim.FusedAdamWState._fields)

    def config_text(self, step: int) -> str:
        """The config text saved with `step` ("" when none was), read without the state: a
        resume can refuse a changed config before restoring onto a state of another layout."""
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                config=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.directory}/{step} is incomplete, corrupt "
                                  f"or unreadable (config): {type(e).__name__}: {e}") from e
        return (out["config"] or {}).get("text", "")

    def restore(self, target: TrainState, step: int | None = None) -> Restored:
        """Restore onto `target`'s shardings (any mesh shape). `target` holds arrays or
        ShapeDtypeStructs with shardings; its frozen part is kept unless the checkpoint holds
        one. `step=None` takes the latest complete checkpoint."""
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"no complete checkpoint in {self.directory}")
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(f"checkpoint step {step} is not a complete checkpoint in "
                                  f"{self.directory} (complete steps: {steps})")
        step_dir = os.path.join(self.directory, str(step))
        saved_frozen = os.path.exists(os.path.join(step_dir, "state")) and self._has_frozen(step)
        abstract = _abstract(_state_tree(target, saved_frozen))
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for a damaged step
            raise CheckpointError(f"checkpoint {step_dir} is incomplete, corrupt or does not "
                                  f"match the model: {type(e).__name__}: {e}") from e
        tree = out["state"]
        frozen = tree["frozen"] if saved_frozen else target.frozen
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(frozen)):
            raise CheckpointError(f"checkpoint {step_dir} holds no frozen base parameters: "
                                  "pass a target whose frozen part is loaded")
        state = TrainState(step=tree["step"], trainable=tree["trainable"], frozen=frozen,
                           opt_state=tree["opt_state"], rng=tree["rng"])
        return Restored(step=step, state=state, data_state=dict(out["data"] or {}))

    def _has_frozen(self, step: int) -> bool:
        return "frozen" in self._state_metadata(step)

    def _state_metadata(self, step: int) -> Mapping[str, Any]:
        """The saved state's tree of array metadata (top level: step, trainable, ...)."""
        try:
            meta = self._manager.item_metadata(step)["state"]
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.directory}/{step} is incomplete, corrupt "
                                  f"or unreadable (state metadata): {type(e).__name__}: {e}"
                                  ) from e
        tree = getattr(meta, "tree", meta)
        return tree if isinstance(tree, Mapping) else {}

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None


def save_params(path: str | os.PathLike, tree: Any) -> None:
    """Parameter-only checkpoint (export / convert); synchronous, atomic."""
    path = os.path.abspath(os.fspath(path))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, tree)
        ckptr.wait_until_finished()


def load_params(path: str | os.PathLike, abstract_tree: Any = None) -> Any:
    """Load a `save_params` checkpoint; with `abstract_tree` (ShapeDtypeStructs with
    shardings, or arrays) onto those shardings, else as host numpy arrays. Host arrays do not
    depend on the devices that saved the checkpoint, so a model written by several processes
    loads in one (and the reverse)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"parameter checkpoint {path} does not exist")
    try:
        if abstract_tree is None:
            with ocp.PyTreeCheckpointer() as ckptr:
                meta = ckptr.metadata(path)
                tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
                as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree,
                                        is_leaf=lambda x: hasattr(x, "shape"))
                return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(path, _abstract(abstract_tree))
    except Exception as e:
        raise CheckpointError(f"parameter checkpoint {path} is incomplete, corrupt or does not "
                              f"match: {type(e).__name__}: {e}") from e
