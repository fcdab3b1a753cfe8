"""Hugging Face checkpoint import / export without torch (safetensors numpy API).

Key names: transformers 5 keeps modules at `model.visual.*`, `model.language_model.*`,
`lm_head.*` but `save_pretrained` writes the original Qwen names (`visual.*`, `model.*`,
`lm_head.*`); both are accepted on load and the latter is written on save. Linear weights are
stored [out, in] by torch and [in, out] here; the Conv3d patch embedding [D, C, Tp, P, P] is a
[C*Tp*P*P, D] matrix here (same flattening as the processor's patches).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from skinr1_jax.model.config import ModelConfig, config_from_hf, config_to_hf
from skinr1_jax.model.layers import lora_a_init
from skinr1_jax.model.vlm import Variables, abstract_variables, unbox


class CheckpointError(ValueError):
    """A checkpoint does not match the model: names the keys and shapes."""


def module_name(path: tuple[str, ...]) -> str:
    """transformers 5 module name of the module owning param `path` (leaf name excluded)."""
    if path[:2] == ("visual", "patch_embed"):
        return "model.visual.patch_embed.proj"
    if path[:2] == ("language_model", "embed_tokens"):
        return "model.language_model.embed_tokens"
    name = ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1])
    return name if path[0] == "lm_head" else f"model.{name}"


def hf_key(path: tuple[str, ...]) -> str:
    """transformers 5 state-dict key of our param `path`."""
    leaf = path[-1]
    suffix = "bias" if leaf == "bias" else "weight"
    return f"{module_name(path)}.{suffix}"


def to_hf(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """Our layout -> torch layout for param `path`."""
    if path[:2] == ("visual", "patch_embed"):
        return np.ascontiguousarray(value.T)  # reshaped to the Conv3d shape by the caller
    if path[-1] == "kernel":
        return np.ascontiguousarray(value.T)
    return value


def from_hf(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """torch layout -> our layout for param `path`."""
    if path[:2] == ("visual", "patch_embed"):
        return np.ascontiguousarray(value.reshape(value.shape[0], -1).T)
    if path[-1] == "kernel":
        return np.ascontiguousarray(value.T)
    return value


def canonical_key(key: str) -> str:
    """Map a saved key (either naming) to the transformers 5 runtime naming."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + key[len("model."):]
    return key


def saved_key(key: str) -> str:
    """transformers 5 runtime key -> the name `save_pretrained` writes."""
    if key.startswith("model.visual."):
        return key[len("model."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


def flatten_tree(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from flatten_tree(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def get_path(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _tensor_index(hf_dir: Path) -> dict[str, Path]:
    """Saved key -> file, from model.safetensors.index.json or every *.safetensors."""
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: hf_dir / f for k, f in weight_map.items()}
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{hf_dir}: no *.safetensors files")
    out = {}
    for f in files:
        with safe_open(str(f), framework="numpy") as sf:
            out.update({k: f for k in sf.keys()})
    return out


def _lora_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    if cfg.lora.rank <= 0:
        return {}
    lora = unbox(abstract_variables(cfg))["lora"]
    return {p: v.shape for p, v in flatten_tree(lora)}


def init_lora(cfg: ModelConfig, rng: jax.Array) -> dict[str, Any]:
    """Fresh LoRA collection (A PEFT-uniform, B zero) without initialising the base model."""
    out: dict[str, Any] = {}
    dtype = jnp.dtype(cfg.param_dtype)
    for i, (path, shape) in enumerate(sorted(_lora_shapes(cfg).items())):
        value = (lora_a_init(jax.random.fold_in(rng, i), shape, dtype) if path[-1] == "lora_a"
                 else jnp.zeros(shape, dtype))
        set_path(out, path, value)
    return out


def load_hf(hf_dir: str | Path, cfg: ModelConfig | None = None, shardings: Any = None,
            dtype: str | None = None, rng: jax.Array | None = None) -> tuple[ModelConfig, Variables]:
    """Read config.json + safetensors into plain-array variables.

    cfg: defaults to config_from_hf(config.json); give one to set dtype / remat / LoRA.
    shardings: a pytree of jax Shardings matching the returned variables (or their "params"),
    each tensor is device_put straight onto its sharding. dtype: parameter dtype (default
    cfg.param_dtype). With cfg.lora.rank > 0 a fresh "lora" collection is added (seeded by rng).
    """
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{config_path} not found")
    if cfg is None:
        cfg = config_from_hf(json.loads(config_path.read_text()))
    if dtype is not None:
        cfg = cfg.replace(param_dtype=dtype)
    np_dtype = jnp.dtype(cfg.param_dtype)
    expected = {p: v for p, v in flatten_tree(unbox(abstract_variables(cfg))["params"])}
    files = _tensor_index(hf_dir)
    by_canonical = {canonical_key(k): k for k in files}
    wanted = {hf_key(p): p for p in expected}
    tied_extra = {"lm_head.weight"} if cfg.text.tie_word_embeddings else set()
    missing = sorted(set(wanted) - set(by_canonical))
    unexpected = sorted(set(by_canonical) - set(wanted) - tied_extra)
    problems = [f"missing tensor {saved_key(k)} (expected shape "
                f"{_hf_shape(cfg, wanted[k], expected[wanted[k]].shape)})"
                for k in missing]
    problems += [f"unexpected tensor {by_canonical[k]}" for k in unexpected]

    param_shardings = None
    if shardings is not None:
        param_shardings = shardings["params"] if "params" in shardings else shardings
    params: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}
        for key, path in sorted(wanted.items()):
            if key in missing:
                continue
            saved = by_canonical[key]
            f = files[saved]
            if f not in handles:
                handles[f] = stack.enter_context(safe_open(str(f), framework="numpy"))
            value = handles[f].get_tensor(saved)
            want = _hf_shape(cfg, path, expected[path].shape)
            if tuple(value.shape) != want:
                problems.append(f"tensor {saved} has shape {tuple(value.shape)}, model expects {want}")
                continue
            value = from_hf(path, value).astype(np_dtype)
            if param_shardings is not None:
                # from a callback so each host only places its own shards (multi-host safe)
                value = jax.make_array_from_callback(value.shape, get_path(param_shardings, path),
                                                     lambda index, v=value: v[index])
            else:
                value = jnp.asarray(value)
            set_path(params, path, value)
    if problems:
        raise CheckpointError(f"{hf_dir}: checkpoint does not match the model:\n  " + "\n  ".join(problems))
    variables: Variables = {"params": params}
    if cfg.lora.rank > 0:
        lora = init_lora(cfg, jax.random.key(0) if rng is None else rng)
        if shardings is not None and "lora" in shardings:
            lora = jax.tree.map(jax.device_put, lora, shardings["lora"])
        variables["lora"] = lora
    return cfg, variables


def _hf_shape(cfg: ModelConfig, path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Expected torch shape of our param at `path` with our `shape`."""
    if path[:2] == ("visual", "patch_embed"):
        v = cfg.vision
        return (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return tuple(reversed(shape)) if path[-1] == "kernel" else tuple(shape)


def merge_lora(cfg: ModelConfig, variables: Variables) -> dict[str, Any]:
    """Params with every LoRA branch folded in: kernel + A @ B * alpha / r."""
    variables = unbox(variables)
    params = jax.tree.map(lambda x: x, variables["params"])
    for path, a in flatten_tree(variables.get("lora", {})):
        if path[-1] != "lora_a":
            continue
        b = get_path(variables["lora"], (*path[:-1], "lora_b"))
        kpath = (*path[:-1], "kernel")
        kernel = get_path(params, kpath)
        delta = (jnp.asarray(a, jnp.float32) @ jnp.asarray(b, jnp.float32)) * cfg.lora.scaling
        set_path(params, kpath, (kernel.astype(jnp.float32) + delta).astype(kernel.dtype))
    return params


def save_hf(cfg: ModelConfig, variables: Variables, out_dir: str | Path) -> Path:
    """Write config.json + model.safetensors (save_pretrained key names) that transformers
    loads. LoRA branches present in `variables` are merged into the written weights."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = merge_lora(cfg, variables)
    tensors = {}
    for path, value in flatten_tree(params):
        ours = np.asarray(jax.device_get(value))
        tensors[saved_key(hf_key(path))] = to_hf(path, ours).reshape(_hf_shape(cfg, path, ours.shape))
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2))
    return out_dir
