"""The SFT step on device meshes of 1, 2, 4 and 8 fake CPU devices: data parallel (n, 1, 1),
FSDP (1, n, 1) and the 3-D mesh (2, 2, 2), on the tiny model. Per mesh: step time (median,
min, max), compile time, and the bytes of parameters and optimizer state held by one device
(FSDP should divide them by n; data parallelism replicates them).

Fake devices share this machine's cores, so step times show the partitioning overhead rather
than a speed-up; the per-device bytes are what carries over to real accelerators.

    python -m benchmarks.scaling [--repeats 3]

Sets XLA_FLAGS=--xla_force_host_platform_device_count=8 itself when run as a fresh process.
Prints one JSON line.
"""

from __future__ import annotations

import os

DEVICES = 8
_FLAG = f"--xla_force_host_platform_device_count={DEVICES}"
# (jax may be imported already, by benchmarks/__init__; its backend starts later)
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402

from benchmarks import common  # noqa: E402

MESHES = ((1, 1, 1), (2, 1, 1), (4, 1, 1), (8, 1, 1), (1, 2, 1), (1, 4, 1), (1, 8, 1), (2, 2, 2))


def per_device_bytes(tree: Any, device: Any) -> int:
    """Bytes of `tree`'s arrays that live on `device`."""
    total = 0
    for x in jax.tree.leaves(tree):
        total += sum(s.data.nbytes for s in x.addressable_shards if s.device == device)
    return total


def measure(mesh_shape: tuple[int, int, int], cfg: Any, variables: Any, batch: dict[str, Any],
            image_grid: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    from skinr1_jax.train import sharding as shd

    n = mesh_shape[0] * mesh_shape[1] * mesh_shape[2]
    mesh = shd.make_mesh(dict(zip(shd.MESH_AXES, mesh_shape)), devices=jax.devices()[:n])
    dev_batch = shd.shard_batch(batch, mesh)
    step, state, _ = common.train_step(cfg, variables, image_grid, mesh, sft_example=dev_batch)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], dev_batch, None)
        return metrics

    start = time.perf_counter()
    common.block(run())
    first = time.perf_counter() - start
    t = common.time_fn(run, warmup=0, repeats=repeats, sync=common.block)
    device = jax.devices()[0]
    s = holder["state"]
    return {
        "mesh": {"data": mesh_shape[0], "fsdp": mesh_shape[1], "tensor": mesh_shape[2]},
        "devices": n,
        "step": common.throughput(t, batch["input_ids"].size, "tokens"),
        "compile_s": first - t["median_s"],
        "param_bytes_per_device": per_device_bytes(s.trainable, device),
        "opt_state_bytes_per_device": per_device_bytes(s.opt_state, device),
    }


def run(repeats: int = 3, batch_size: int = 8, seq_len: int = 128,
        vocab_size: int = 2048) -> dict[str, Any]:
    from skinr1_jax.model import init_variables, tiny_config, unbox

    if jax.device_count() < DEVICES:
        raise RuntimeError(f"scaling needs {DEVICES} devices, jax sees {jax.device_count()}: "
                           f"run it as a fresh process or set XLA_FLAGS={_FLAG}")
    cfg = tiny_config(vocab_size)
    variables = unbox(init_variables(cfg, jax.random.PRNGKey(0)))
    batch, grid = common.sft_batch(cfg, batch_size, seq_len)
    rows = [measure(m, cfg, variables, batch, grid[0], repeats) for m in MESHES]
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(variables))
    return {"benchmark": "scaling", "batch_size": batch_size, "seq_len": seq_len,
            "param_bytes_total": total, "meshes": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    return common.emit(run(args.repeats))


if __name__ == "__main__":
    main()
