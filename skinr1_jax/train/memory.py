"""Per-device memory of the training state (parameters, gradients, optimizer state) for a model
config on a mesh, from `jax.eval_shape` and the sharding specs: nothing is allocated, so a 7B
recipe can be sized on a laptop before anyone rents a pod.

Activations are not included: `skinr1_jax.train.step.compile_step` reports the compiled step's
real footprint once a device is at hand.

    python -m skinr1_jax.train.memory --model qwen2_5_vl_7b --mesh 1,8,1 --mesh 1,16,1
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.core import meta
from jax.sharding import AbstractMesh, AxisType, Mesh

from skinr1_jax.model import abstract_variables, unbox
from skinr1_jax.model import config as model_config
from skinr1_jax.model.config import LoraConfig, ModelConfig
from skinr1_jax.train import optim
from skinr1_jax.train import state as train_state
from skinr1_jax.train.sharding import MESH_AXES

GB = 1e9


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes held by one device (the largest shard; shards are even by construction of
    LOGICAL_RULES). `global_*` are the unsharded totals."""

    mesh: dict[str, int]
    lora: bool
    num_params: int          # every variable: base + adapters
    num_trainable: int
    frozen_bytes: int        # base weights under LoRA, else 0
    trainable_bytes: int
    grad_bytes: int
    opt_bytes: int
    global_bytes: int        # frozen + trainable + gradients + optimizer state, unsharded

    @property
    def param_bytes(self) -> int:
        return self.frozen_bytes + self.trainable_bytes

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.opt_bytes

    @property
    def num_devices(self) -> int:
        return math.prod(self.mesh.values())

    def fits(self, device_bytes: float, reserve: float = 0.0) -> bool:
        """Whether the state fits in `device_bytes` leaving the fraction `reserve` free
        (for activations, the KV cache and XLA's workspace)."""
        return self.total_bytes <= device_bytes * (1.0 - reserve)


def abstract_mesh(mesh: Mesh | AbstractMesh | Mapping[str, int]) -> AbstractMesh:
    """An AbstractMesh from a concrete mesh or a {data, fsdp, tensor} size mapping (no -1:
    without devices there is nothing to fill)."""
    if isinstance(mesh, Mesh):
        return mesh.abstract_mesh
    if isinstance(mesh, AbstractMesh):
        return mesh
    missing = [a for a in MESH_AXES if a not in mesh]
    if missing:
        raise ValueError(f"mesh sizes {dict(mesh)} lack axes {missing}")
    sizes = tuple(int(mesh[a]) for a in MESH_AXES)
    if any(s < 1 for s in sizes):
        raise ValueError(f"mesh sizes {dict(mesh)}: every size must be >= 1 "
                         "(no -1 without devices)")
    return AbstractMesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _cast_collections(variables: Any, dtypes: Mapping[str, str]) -> Any:
    unknown = sorted(set(dtypes) - set(variables))
    if unknown:
        raise ValueError(f"collection_dtypes names {unknown}; the model has {sorted(variables)}")

    def cast(dtype: str):
        def one(x):
            if isinstance(x, meta.Partitioned):
                return x.replace_boxed(jax.ShapeDtypeStruct(x.value.shape, jnp.dtype(dtype)))
            return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype))
        return one
    return {name: jax.tree.map(cast(dtypes[name]), tree,
                               is_leaf=lambda x: isinstance(x, meta.Partitioned))
            if name in dtypes else tree for name, tree in variables.items()}


def _device_bytes(abstract: Any, shardings: Any) -> int:
    def one(x, s):
        return math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
    return sum(jax.tree.leaves(jax.tree.map(one, abstract, shardings)))


def _global_bytes(abstract: Any) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract))


def _count(abstract: Any) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract))


def estimate_memory(cfg: ModelConfig, mesh: Mesh | AbstractMesh | Mapping[str, int], *,
                    optimizer: optax.GradientTransformation | None = None,
                    lora: bool | None = None,
                    collection_dtypes: Mapping[str, str] | None = None,
                    grad_accum: int = 1) -> MemoryEstimate:
    """Per-device bytes of the TrainState that `state.create_train_state` would build.

    `lora` defaults to `cfg.lora.rank > 0` (then only the "lora" collection trains and the
    optimizer holds state for it alone). `collection_dtypes` overrides a collection's storage
    dtype for what-if sizing, e.g. {"lora": "float32"} for PEFT-style fp32 adapters on a bf16
    base. Gradients count one copy of the trainable tree, two when `grad_accum > 1` (the
    accumulator carry plus the micro-batch gradient). `optimizer` defaults to the training
    optimizer (AdamW: two moments per trainable parameter).
    """
    lora = cfg.lora.rank > 0 if lora is None else lora
    if lora and cfg.lora.rank <= 0:
        raise ValueError("lora=True but cfg.lora.rank is 0: the model has no adapters")
    if grad_accum < 1:
        raise ValueError(f"grad_accum={grad_accum}: must be >= 1")
    optimizer = optimizer or optim.make_optimizer(1e-5, 100)
    amesh = abstract_mesh(mesh)
    boxed = abstract_variables(cfg)
    if collection_dtypes:
        boxed = _cast_collections(boxed, collection_dtypes)
    shardings = train_state.state_shardings(boxed, optimizer, amesh, lora)
    trainable, frozen = train_state.split_variables(unbox(boxed), lora)
    opt_state = jax.eval_shape(optimizer.init, trainable)

    grad_copies = 1 if grad_accum == 1 else 2
    trainable_bytes = _device_bytes(trainable, shardings.trainable)
    global_trainable = _global_bytes(trainable)
    return MemoryEstimate(
        mesh=dict(amesh.shape),
        lora=lora,
        num_params=_count(trainable) + _count(frozen),
        num_trainable=_count(trainable),
        frozen_bytes=_device_bytes(frozen, shardings.frozen),
        trainable_bytes=trainable_bytes,
        grad_bytes=grad_copies * trainable_bytes,
        opt_bytes=_device_bytes(opt_state, shardings.opt_state),
        global_bytes=(_global_bytes(frozen) + (1 + grad_copies) * global_trainable
                      + _global_bytes(opt_state)),
    )


def format_table(rows: Sequence[tuple[str, MemoryEstimate]],
                 device_sizes: Mapping[str, float] | None = None) -> str:
    """A Markdown table, one row per (label, estimate); sizes in GB (1e9 bytes). With
    `device_sizes` ({"H100 80GB": 80e9, ...}) a column per device says whether the state fits."""
    device_sizes = dict(device_sizes or {})
    head = ["setting", "mesh (data,fsdp,tensor)", "devices", "trainable params",
            "weights GB", "grads GB", "optimizer GB", "total GB/device", *device_sizes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, e in rows:
        mesh = ",".join(str(e.mesh[a]) for a in MESH_AXES)
        cells = [label, mesh, str(e.num_devices), f"{e.num_trainable / 1e6:,.1f}M",
                 f"{e.param_bytes / GB:.2f}", f"{e.grad_bytes / GB:.2f}",
                 f"{e.opt_bytes / GB:.2f}", f"{e.total_bytes / GB:.2f}"]
        cells += ["yes" if e.fits(size) else "no" for size in device_sizes.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What-if settings for the CLI table: (label, ModelConfig overrides, collection dtypes). The
# LoRA values are the paper's (configs/skinr1_qwen2_5_vl_7b.py).
_PAPER_LORA = LoraConfig(rank=64, alpha=32.0, dropout=0.1)
SETTINGS: tuple[tuple[str, dict[str, Any], dict[str, str]], ...] = (
    ("LoRA r=64, bf16 base + bf16 adapters (recipe)",
     dict(param_dtype="bfloat16", dtype="bfloat16", lora=_PAPER_LORA),
     {}),
    ("LoRA r=64, bf16 base + fp32 adapters (PEFT default)",
     dict(param_dtype="bfloat16", dtype="bfloat16", lora=_PAPER_LORA),
     {"lora": "float32"}),
    ("full fine-tuning, fp32 master weights",
     dict(param_dtype="float32", dtype="bfloat16", lora=LoraConfig(rank=0)), {}),
)
DEVICES = {"TPU v4 32GB": 32e9, "H100 80GB": 80e9, "TPU v5p 95GB": 95e9}


def _parse_mesh(text: str) -> dict[str, int]:
    parts = text.split(",")
    if len(parts) != len(MESH_AXES) or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"--mesh {text!r}: expected data,fsdp,tensor sizes, e.g. 1,8,1")
    return dict(zip(MESH_AXES, (int(p) for p in parts)))


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2_5_vl_7b",
                        choices=("qwen2_5_vl_3b", "qwen2_5_vl_7b"))
    parser.add_argument("--mesh", action="append", type=_parse_mesh,
                        help="data,fsdp,tensor sizes (repeatable); "
                             "default: 1,1,1 1,8,1 1,4,2 1,16,1 1,32,1")
    parser.add_argument("--grad-accum", type=int, default=16,
                        help="the recipe's SFT accumulation (16): adds a gradient accumulator")
    args = parser.parse_args(argv)
    meshes = args.mesh or [_parse_mesh(m) for m in ("1,1,1", "1,8,1", "1,4,2", "1,16,1", "1,32,1")]
    preset = getattr(model_config, f"{args.model}_config")
    rows = []
    for label, overrides, dtypes in SETTINGS:
        cfg = preset(**overrides)
        for mesh in meshes:
            rows.append((label, estimate_memory(cfg, mesh, collection_dtypes=dtypes,
                                                grad_accum=args.grad_accum)))
    table = format_table(rows, DEVICES)
    print(table)
    return table


if __name__ == "__main__":
    main()
