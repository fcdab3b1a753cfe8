"""Multi-process start-up: jax.distributed on TPU pods and GPU clusters, and the data shard
each process reads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

import jax

# Environment variables that show a multi-process launch.
_COORDINATOR_VARS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def multiprocess_env(env: Mapping[str, str] | None = None) -> str | None:
    """'explicit', 'tpu', 'slurm' or 'coordinator' when the environment describes a multi-process run,
    else None (single process)."""
    env = os.environ if env is None else env
    if env.get("SKINR1_DISTRIBUTED") == "1":      # explicit opt-in (launch/scripts/tpu_pod.sh)
        return "explicit"
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
        return "slurm"
    if any(env.get(v) for v in _COORDINATOR_VARS):
        return "coordinator"
    return None


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Call `jax.distributed.initialize()` when running as one of several processes; must run
    before anything touches devices. Returns whether it initialised.

    TPU pods and SLURM are auto-detected by JAX's cluster plugins (SKINR1_DISTRIBUTED=1 forces
    the call); a generic cluster sets JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID.
    """
    env = os.environ if env is None else env
    kind = multiprocess_env(env)
    if kind is None:
        return False
    if kind == "coordinator":
        address = env.get("JAX_COORDINATOR_ADDRESS") or env["COORDINATOR_ADDRESS"]
        missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if v not in env]
        if missing:
            raise RuntimeError(f"JAX_COORDINATOR_ADDRESS={address} is set but {missing} are not")
        jax.distributed.initialize(coordinator_address=address,
                                   num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    return True


def data_shard() -> tuple[int, int]:
    """(index, count) of this process's data shard: each process reads 1/count of the data."""
    return jax.process_index(), jax.process_count()


def is_main_process() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (a no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[bool]:
    """Run the block on process 0 first, then on the others (e.g. process 0 builds a dataset
    once; the others then find it built). Yields whether this is the main process."""
    main = is_main_process()
    if not main:
        barrier(name)
    try:
        yield main
    finally:
        if main:
            barrier(name)
