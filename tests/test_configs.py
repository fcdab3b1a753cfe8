"""Every config file in configs/ loads, validates, and keeps the default's schema, so that
`--config.<key>=value` means the same thing with each of them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from configs import default
from skinr1_jax.config import validate
from skinr1_jax.model.hf_io import flatten_tree

CONFIGS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem != "__init__")


def _keys(config) -> set[str]:
    return {".".join(path) for path, _ in flatten_tree(config.to_dict())}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_file_validates_with_the_default_schema(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    validate(config)
    extra = _keys(config) - _keys(default.get_config())
    # Only the ablation sweep adds keys (its variants), under its own section.
    assert all(k.startswith("ablation.") for k in extra), extra
    assert _keys(default.get_config()) <= _keys(config)



def test_lookup_reward_needs_the_option_check_it_scores():
    from skinr1_jax.config import ConfigError

    config = default.get_config()
    config.rl.reward.check_weight = 0.5
    assert config.generate.option_check
    validate(config)
    config.generate.option_check = False
    with pytest.raises(ConfigError, match="rl.reward.check_weight"):
        validate(config)
    config.rl.reward.check_weight = 0.0
    validate(config)
    config.rl.reward.check_weight = -0.5
    with pytest.raises(ConfigError, match="rl.reward.check_weight"):
        validate(config)
