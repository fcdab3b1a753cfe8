"""Device mesh, logical-axis rules and the NamedShardings of parameters, optimizer state and
batches: every sharding decision of the project lives here.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallelism with
parameters and optimizer state sharded over it) and `tensor` (model parallelism of heads, MLP
and vocabulary). Mesh axes are `AxisType.Auto` (jax 0.10 defaults to Explicit): the step is
jitted with explicit in/out shardings and the compiler propagates shardings through a model that
is written sharding-agnostic; Explicit mode would make every op in the model declare its output
sharding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from flax.core import meta
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from skinr1_jax.train import optim

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axes, in order of preference. A mesh axis is used at most once per
# array; an axis whose size does not divide the dimension is dropped (so tiny models and odd
# head counts still shard cleanly). Names mapped to None are known and replicated.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations and the KV cache
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_vocab", "tensor"),
    ("layers", None),
    ("cache_len", None),
    ("head_dim", None),
    # language model (skinr1_jax.model.layers documents which parameter carries which name)
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    # vision tower and patch merger
    ("vision_patch", None),
    ("vision_embed", "fsdp"),
    ("vision_qkv", "tensor"),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
    ("vision_merge_in", "fsdp"),
    ("vision_merge", "tensor"),
    # LoRA adapters: the rank is small; the other dimension follows the base weight
    ("lora_rank", None),
)

_RULES = dict(LOGICAL_RULES)


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh from config sizes; one size may be -1 (fills the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {}
    for axis in MESH_AXES:
        if axis not in mesh_cfg:
            raise ValueError(f"mesh config lacks key 'mesh.{axis}' (have {sorted(mesh_cfg)})")
        size = int(mesh_cfg[axis])
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{axis}={size}: sizes are positive or -1")
        sizes[axis] = size
    fill = [a for a, s in sizes.items() if s == -1]
    if len(fill) > 1:
        raise ValueError(f"mesh: only one axis may be -1, got {fill}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices not divisible by the fixed axes "
                             f"{ {a: s for a, s in sizes.items() if s != -1} }")
        sizes[fill[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, "
                         f"have {len(devices)}")
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    where: str = "array") -> P:
    """PartitionSpec for an array whose dimensions carry these logical names."""
    if len(names) != len(shape):
        raise ValueError(f"{where}: {len(names)} logical names {tuple(names)} for shape "
                         f"{tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in _RULES:
            raise ValueError(f"{where}: logical axis '{name}' has no rule in "
                             f"skinr1_jax.train.sharding.LOGICAL_RULES")
        axes = _RULES[name]
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes = [a for a in axes if a not in used and mesh.shape[a] > 1]
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes.pop()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*spec)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_shardings(variables: Any, mesh: Mesh) -> Any:
    """NamedShardings for a (possibly abstract) variable tree boxed with logical names.

    Boxed leaves (`nn.LogicallyPartitioned`) are sharded by LOGICAL_RULES; plain leaves are
    replicated. The result has the structure of the unboxed tree.
    """
    def one(path, x):
        if isinstance(x, meta.Partitioned):
            spec = logical_to_spec(x.names, x.value.shape, mesh, where=_path_str(path))
            return NamedSharding(mesh, spec)
        return NamedSharding(mesh, P())
    return jax.tree_util.tree_map_with_path(
        one, variables, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def place_variables(variables: Any, boxed_abstract: Any, mesh: Mesh) -> Any:
    """`variables` (host arrays, or arrays in any sharding) in their `param_shardings` on the
    mesh. Host arrays must be equal on every process (each keeps only its shards); arrays
    already in place are not copied."""
    return jax.device_put(dict(variables), param_shardings(boxed_abstract, mesh))


def replicates_parameters(mesh: Mesh) -> bool:
    """Whether `mesh` keeps a whole copy of every parameter on each device (no fsdp or tensor
    sharding): what the fused optimizer's flat state needs (`optim.fused_adamw`)."""
    return mesh.shape.get("fsdp", 1) == 1 and mesh.shape.get("tensor", 1) == 1


def opt_state_shardings(optimizer: optax.GradientTransformation, abstract_params: Any,
                        params_shardings: Any, mesh: Mesh) -> Any:
    """Shardings of `optimizer.init(params)`: parameter-shaped leaves follow their parameter,
    everything else (counts, schedules) is replicated; a fused optimizer's flat state is
    replicated whole, so it needs replicated parameters."""
    abstract_state = jax.eval_shape(optimizer.init, abstract_params)
    replicated = NamedSharding(mesh, P())
    if isinstance(optimizer, optim.FusedTransformation):
        sharded = [s for s in jax.tree.leaves(params_shardings) if not s.is_fully_replicated]
        if sharded:
            raise ValueError(
                f"the fused optimizer keeps flat, replicated moments, but this mesh "
                f"({dict(mesh.shape)}) shards {len(sharded)} trainable parameter(s): use it "
                "with fsdp = tensor = 1, or the per-parameter optimizer (fused=False)")
        return jax.tree.map(lambda _: replicated, abstract_state)
    return optax.tree_map_params(
        optimizer, lambda _, s: s, abstract_state, params_shardings,
        transform_non_params=lambda _: replicated)


def batch_sharding(mesh: Mesh, ndim: int = 1, batch_dim: int = 0) -> NamedSharding:
    """Sharding of a batch array: `batch_dim` over (data, fsdp), the rest replicated."""
    spec = [None] * ndim
    spec[batch_dim] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def _batch_dim(path) -> tuple[str, int]:
    key = str(getattr(path[-1], "key", "")) if path else ""
    return key, 1 if key == "position_ids" else 0


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
    """Shardings for a dict batch: leading dim over (data, fsdp) where it divides.

    `position_ids` ([3, B, S]) is sharded on its second dimension; flattened image patches
    ([B * patches, D]) shard with their images; an array whose leading dimension is not
    divisible by the data axes is replicated.
    """
    n = mesh.shape["data"] * mesh.shape["fsdp"]

    def one(path, x):
        _, bdim = _batch_dim(path)
        if x.ndim <= bdim or x.shape[bdim] % n:
            return NamedSharding(mesh, P())
        return batch_sharding(mesh, x.ndim, bdim)
    return jax.tree_util.tree_map_with_path(one, batch)


def _global_shape(path, x) -> jax.ShapeDtypeStruct:
    """The global shape of a batch leaf: a jax Array already is global; a host array is this
    process's block, and every process holds the same number of rows."""
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)
    _, bdim = _batch_dim(path)
    shape = list(np.shape(x))
    if len(shape) > bdim:
        shape[bdim] *= jax.process_count()
    return jax.ShapeDtypeStruct(tuple(shape), x.dtype)


def global_shapes(batch: Any) -> Any:
    """ShapeDtypeStructs of the global batch whose process-local block is `batch` (host arrays
    or ShapeDtypeStructs). Input shardings of a jitted step are built from these, never from
    the local example, so a small per-process batch gets the shardings of the global one."""
    return jax.tree_util.tree_map_with_path(_global_shape, batch)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """The global batch on the mesh (`batch_shardings`) from this process's block of rows.

    Each process passes its L rows (what `data.pipeline.BatchIterator` hands it: block p of
    the global batch), laid out on the rows its devices hold (on a process-major mesh, rows
    [p * L, (p + 1) * L)). Leaves that are already jax Arrays (say
    reference log-probs computed on device) are global: they are resharded on device, never
    copied to the host. A global batch too small to split over the batch axes is replicated:
    its host rows (data, never parameters) are gathered from every process first.
    """
    from jax.experimental import multihost_utils

    host = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else np.asarray(x), batch)
    shapes = jax.tree_util.tree_map_with_path(_global_shape, host)
    shardings = batch_shardings(shapes, mesh)

    def place(path, x, sharding, shape):
        if isinstance(x, jax.Array) or jax.process_count() == 1:
            return jax.device_put(x, sharding)
        if sharding.is_fully_replicated:
            _, bdim = _batch_dim(path)
            rows = np.moveaxis(x, bdim, 0) if x.ndim > bdim else x[None]
            full = np.asarray(multihost_utils.process_allgather(rows, tiled=True))
            return jax.device_put(np.moveaxis(full, 0, bdim) if x.ndim > bdim else full[0],
                                  sharding)
        return jax.make_array_from_process_local_data(sharding, x, shape.shape)
    return jax.tree_util.tree_map_with_path(place, host, shardings, shapes)


def local_rows(x: jax.Array, batch_dim: int = 0) -> np.ndarray:
    """This process's rows of a global batch-major array, as numpy: the inverse of
    `shard_batch` (the rows its devices hold, in order, as `make_array_from_process_local_data`
    laid them out; block p of an array replicated over processes). Only these rows cross from
    device to host: a process never pulls rows another process owns."""
    count, index = jax.process_count(), jax.process_index()
    rows = x.shape[batch_dim]
    if count == 1:
        return np.asarray(x)
    if rows % count:
        raise ValueError(f"{rows} rows do not split over {count} processes")
    ranges: dict[int, tuple[int, Any]] = {}
    for shard in x.addressable_shards:
        sl = shard.index[batch_dim]
        start, stop = sl.start or 0, rows if sl.stop is None else sl.stop
        ranges.setdefault(start, (stop, shard.data))
    if any(start == 0 and stop == rows for start, (stop, _) in ranges.items()):
        data = ranges[0][1]     # every process holds every row: take block p
        lo, hi = index * rows // count, (index + 1) * rows // count
        return np.asarray(jax.lax.slice_in_dim(data, lo, hi, axis=batch_dim))
    out = np.concatenate([np.asarray(ranges[s][1]) for s in sorted(ranges)], axis=batch_dim)
    if out.shape[batch_dim] != rows // count:
        raise ValueError(f"process {index}'s devices hold {out.shape[batch_dim]} of {rows} rows, "
                         f"not 1/{count}: the batch axes do not split rows by process")
    return out


def constrain(x: jax.Array, names: Sequence[str | None], mesh: Mesh | None = None) -> jax.Array:
    """Activation sharding constraint by logical names; a no-op without a mesh in context.

    Unlike some anchors this also applies on CPU, so fake-device tests exercise it.
    """
    mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh)))


@contextlib.contextmanager
def mesh_context(mesh: Mesh) -> Iterator[None]:
    """Mesh and Flax logical rules in context, for tracing models that use
    `nn.with_logical_constraint` or `constrain`."""
    flax_rules = tuple((k, v) for k, v in LOGICAL_RULES)
    with jax.set_mesh(mesh), nn.logical_axis_rules(flax_rules):
        yield


def shard_shapes(tree: Any) -> Any:
    """Per-device shard shape of each array (for checks and start-up logs)."""
    return jax.tree.map(lambda a: tuple(a.addressable_shards[0].data.shape), tree)


def describe(shardings: Any) -> list[str]:
    """One line per leaf: path and PartitionSpec (logged once at start-up)."""
    lines = []
    for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]:
        lines.append(f"{_path_str(path)}: {s.spec}")
    return lines


def batch_divisor(mesh: Mesh) -> int:
    """Number of batch shards; global batch sizes should be multiples of it."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
