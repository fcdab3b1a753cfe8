"""Flax Qwen2.5-VL (vision tower + Qwen2 decoder), rotary, LoRA, and HF / PEFT import-export.

Public API (see docs/architecture.md, model section): configs in `config`, the pure forward and
KV cache in `vlm`, host-side position ids in `rope`, checkpoints in `hf_io` / `peft_io` /
`convert`. Logical axis names of the parameters are documented in `layers`.
"""

from skinr1_jax.model.config import (LoraConfig, ModelConfig, TextConfig, VisionConfig,
                                     config_from_hf, config_to_hf, qwen2_5_vl_3b_config,
                                     qwen2_5_vl_7b_config, tiny_config)
from skinr1_jax.model.rope import get_rope_index
from skinr1_jax.model.vlm import (CACHE_AXES, abstract_variables, forward, init_cache,
                                  init_variables, logical_axes, unbox)

__all__ = [
    "CACHE_AXES", "LoraConfig", "ModelConfig", "TextConfig", "VisionConfig", "abstract_variables",
    "config_from_hf", "config_to_hf", "forward", "get_rope_index", "init_cache", "init_variables",
    "logical_axes", "qwen2_5_vl_3b_config", "qwen2_5_vl_7b_config", "tiny_config", "unbox",
]
