"""PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors) in and out.

PEFT keys are `base_model.model.<module>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r]
with transformers 5 module names (`model.language_model.layers.0.self_attn.q_proj`,
`model.visual.merger.mlp.0`); adapters written against transformers 4 names (`model.layers.*`,
`visual.*`) load too. Our lora_a is [in, r] and lora_b [r, out].
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from skinr1_jax.model.config import LoraConfig, ModelConfig
from skinr1_jax.model.hf_io import (CheckpointError, canonical_key, flatten_tree, set_path,
                                    merge_lora, module_name)
from skinr1_jax.model.vlm import Variables, abstract_variables, unbox

PEFT_PREFIX = "base_model.model."
_UNSUPPORTED = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False,
                "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
                "bias": "none", "layers_to_transform": None}


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    if not path.exists():
        raise CheckpointError(f"{path} not found")
    conf = json.loads(path.read_text())
    if conf.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: peft_type={conf.get('peft_type')!r}, only LORA is supported")
    for key, ok in _UNSUPPORTED.items():
        if conf.get(key) not in (None, ok):
            raise CheckpointError(f"{path}: {key}={conf[key]!r} is not supported (need {ok!r})")
    return conf


def _read_tensors(adapter_dir: Path) -> dict[str, np.ndarray]:
    path = adapter_dir / "adapter_model.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path} not found (only the safetensors adapter format is supported)")
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _split_key(key: str, source: Path) -> tuple[str, str]:
    """PEFT key -> (transformers 5 module name, "lora_A" | "lora_B")."""
    name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    for part in ("lora_A", "lora_B"):
        for suffix in (f".{part}.weight", f".{part}.default.weight"):
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                return canonical_key(module + ".weight")[: -len(".weight")], part
    raise CheckpointError(f"{source}: unsupported adapter tensor {key} (only lora_A / lora_B "
                          f"weights of Linear layers are supported)")


def _linear_paths(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """transformers 5 module name -> our module path, for every Linear."""
    params = unbox(abstract_variables(dataclasses.replace(cfg, lora=LoraConfig(rank=0))))["params"]
    return {module_name(p): p[:-1] for p, _ in flatten_tree(params) if p[-1] == "kernel"}


def load_adapter(adapter_dir: str | Path, cfg: ModelConfig, variables: Variables,
                 merge: bool = False) -> tuple[ModelConfig, Variables]:
    """Apply a PEFT LoRA adapter to `variables` (base params from load_hf / init_variables).

    merge=False: returns cfg with `lora` describing the adapter (rank, alpha, dropout and the
    exact modules in the file) and variables with that "lora" collection.
    merge=True: returns the base cfg with LoRA off and the adapter folded into the params.
    """
    adapter_dir = Path(adapter_dir)
    conf = _read_config(adapter_dir)
    tensors = _read_tensors(adapter_dir)
    source = adapter_dir / "adapter_model.safetensors"
    rank, alpha = int(conf["r"]), float(conf["lora_alpha"])
    found: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    for key, value in tensors.items():
        module, part = _split_key(key, source)
        found.setdefault(module, {})[part] = (key, value)
    linear = _linear_paths(cfg)
    problems = [f"{found[m][next(iter(found[m]))][0]}: module {m} is not a Linear of this model"
                for m in sorted(found) if m not in linear]
    problems += [f"module {m}: has {sorted(found[m])} but needs both lora_A and lora_B"
                 for m in sorted(found) if len(found[m]) != 2]
    if problems:
        raise CheckpointError(f"{source}:\n  " + "\n  ".join(problems))

    lora_cfg = LoraConfig(rank=rank, alpha=alpha, dropout=float(conf.get("lora_dropout", 0.0)),
                          target_modules=tuple(sorted(found)), include_vision_blocks=True)
    new_cfg = dataclasses.replace(cfg, lora=lora_cfg)
    expected = dict(flatten_tree(unbox(abstract_variables(new_cfg))["lora"]))
    dtype = jnp.dtype(cfg.param_dtype)
    lora: dict[str, Any] = {}
    for module, parts in sorted(found.items()):
        path = linear[module]
        for part, leaf in (("lora_A", "lora_a"), ("lora_B", "lora_b")):
            key, value = parts[part]
            want = expected[(*path, leaf)].shape
            if tuple(value.shape[::-1]) != tuple(want):
                problems.append(f"tensor {key} has shape {tuple(value.shape)}, model expects "
                                f"{tuple(want[::-1])}")
                continue
            set_path(lora, (*path, leaf), jnp.asarray(np.ascontiguousarray(value.T), dtype))
    if problems:
        raise CheckpointError(f"{source}:\n  " + "\n  ".join(problems))
    base = {k: v for k, v in unbox(variables).items() if k != "lora"}
    out = {**base, "lora": lora}
    if merge:
        return (dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, rank=0)),
                {**base, "params": merge_lora(new_cfg, out)})
    return new_cfg, out


def save_adapter(cfg: ModelConfig, variables: Variables, out_dir: str | Path,
                 base_model_name_or_path: str | None = None) -> Path:
    """Write the "lora" collection as a PEFT adapter folder that `PeftModel.from_pretrained`
    loads onto transformers' Qwen2_5_VLForConditionalGeneration."""
    if cfg.lora.rank <= 0 or "lora" not in variables:
        raise ValueError("save_adapter needs cfg.lora.rank > 0 and a 'lora' collection in variables")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lora = unbox(variables)["lora"]
    tensors, modules = {}, []
    for path, value in flatten_tree(lora):
        module = module_name((*path[:-1], "kernel"))
        part = "lora_A" if path[-1] == "lora_a" else "lora_B"
        tensors[f"{PEFT_PREFIX}{module}.{part}.weight"] = np.ascontiguousarray(
            np.asarray(jax.device_get(value)).T)
        modules.append(module)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    targets: list[str] | str = sorted(set(modules))
    if isinstance(cfg.lora.target_modules, str):
        targets = cfg.lora.target_modules
    conf = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha, "lora_dropout": cfg.lora.dropout,
        "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(conf, indent=2))
    return out_dir
