"""Config validation: one schema (configs/default.py) that every config file fills.

ml_collections already refuses unknown override keys and wrong override types; this module
adds the checks a ConfigDict cannot express (enumerations, ranges, cross-field rules), so a bad
experiment fails at start-up with one line naming the key instead of an hour into a run.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

STAGES = ("generate", "pretrain", "sft", "rl", "eval", "export")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key."""


_CHOICES = {
    "model.name": ("tiny", "qwen2_5_vl_3b", "qwen2_5_vl_7b", "hf"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.matmul_dtype": ("", "float32", "bfloat16"),
    "data.subset": ("default", "full"),
    "data.class_balance": ("balanced", "fitzpatrick"),
    "data.on_bad_image": ("fail", "skip"),
    "rl.loss_agg": ("seq_mean", "token_mean"),
    "rl.task": ("mcq", "open", "mixed"),
    "generate.option_thinking": ("full", "findings"),
    "rl.init_from": ("sft", "base"),
    "pretrain.keep": ("vision", "all"),
    "rl.reward.variant": ("hierarchical", "flat"),
    "rl.reward.distance_mode": ("distance", "shared_depth"),
}

_POSITIVE_INTS = ("pretrain.batch_size", "pretrain.max_seq_len", "sft.batch_size", "sft.grad_accum",
                  "rl.batch_size", "rl.num_generations",
                  "rl.max_new_tokens", "rl.mu", "rl.option_draws", "eval.batch_size", "eval.max_new_tokens",
                  "checkpoint.every_steps", "checkpoint.keep", "log.every_steps",
                  "data.max_seq_len", "generate.question_variants")
_NON_NEGATIVE = ("pretrain.steps", "pretrain.learning_rate", "pretrain.questions_per_image", "sft.steps", "rl.steps",
                 "sft.learning_rate", "rl.learning_rate", "rl.beta",
                 "rl.lambda_sft", "rl.lambda_rl", "rl.temperature", "model.lora.rank",
                 "model.lora.dropout", "eval.max_examples", "data.max_target_tokens",
                 "rl.reward.check_weight", "data.length_bucket")


def get(config: ConfigDict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if part not in node:
            raise ConfigError(f"config key '{dotted}' is missing")
        node = node[part]
    return node


def validate(config: ConfigDict) -> ConfigDict:
    """Raise ConfigError naming the first bad key; return the config unchanged."""
    for key, choices in _CHOICES.items():
        value = get(config, key)
        if value not in choices:
            raise ConfigError(f"config key '{key}' = {value!r}; expected one of {choices}")
    for key in _POSITIVE_INTS:
        value = get(config, key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config key '{key}' = {value!r}; expected a positive integer")
    for key in _NON_NEGATIVE:
        value = get(config, key)
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"config key '{key}' = {value!r}; expected a number >= 0")
    for axis in ("data", "fsdp", "tensor"):
        value = get(config, f"mesh.{axis}")
        if not isinstance(value, int) or (value < 1 and value != -1):
            raise ConfigError(f"config key 'mesh.{axis}' = {value!r}; expected -1 or >= 1")
    if not 0.0 < get(config, "data.train_fraction") <= 1.0:
        raise ConfigError("config key 'data.train_fraction' must be in (0, 1]")
    if not 64 <= get(config, "data.image_size") <= 448:
        raise ConfigError("config key 'data.image_size' must be within 64..448 pixels")
    if get(config, "rl.num_generations") < 2:
        raise ConfigError("config key 'rl.num_generations' must be >= 2 for group advantages")
    if not 0.0 <= get(config, "rl.clip_low") < 1.0:
        raise ConfigError("config key 'rl.clip_low' must be in [0, 1): the ratio's lower clip "
                          "is 1 - clip_low")
    if get(config, "rl.clip_high") < 0.0:
        raise ConfigError("config key 'rl.clip_high' must be >= 0")
    mu, every = get(config, "rl.mu"), get(config, "checkpoint.every_steps")
    if mu > 1 and every > 0 and every % mu:
        # A checkpoint inside a cycle would resume without the cycle's rollout batch (it is not
        # saved), so the resumed run would sample afresh and differ from an uninterrupted one.
        raise ConfigError(f"config key 'checkpoint.every_steps' = {every} must be a multiple of "
                          f"rl.mu = {mu}, so that checkpoints fall between rollout cycles")
    if get(config, "rl.reward.check_weight") > 0 and not get(config, "generate.option_check"):
        # The lookup reward scores the option check SFT teaches; without one it is always 0.
        raise ConfigError("config key 'rl.reward.check_weight' > 0 needs generate.option_check "
                          "(set check_weight to 0 or option_check to True)")
    if get(config, "model.name") == "hf" and not get(config, "model.hf_dir"):
        raise ConfigError("config key 'model.hf_dir' is required when model.name = 'hf'")
    for model in get(config, "eval.models"):
        if model not in ("base", "sft", "sft_rl"):
            raise ConfigError(f"config key 'eval.models' has unknown model {model!r}")
    return config


def to_text(config: ConfigDict) -> str:
    """The resolved config as reviewable text (written into every workdir)."""
    return config.to_yaml() if hasattr(config, "to_yaml") else str(config)
