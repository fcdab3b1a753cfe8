"""Resuming is refused when the saved config differs where it shapes the stage's updates."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs.default import get_config
from skinr1_jax.config import ConfigError
from skinr1_jax.stages.loop import check_resumable


def test_same_config_and_legacy_checkpoints_resume():
    c = get_config()
    check_resumable("sft", c.to_json(), c, Path("ck"))
    check_resumable("sft", "", c, Path("ck"))  # written before configs were saved


def test_changed_stage_settings_are_named():
    saved = get_config()
    now = get_config()
    now.sft.batch_size = 8
    now.data.max_seq_len = 200
    with pytest.raises(ConfigError, match=r"sft\.batch_size: 16 -> 8.*|data\.max_seq_len"):
        check_resumable("sft", saved.to_json(), now, Path("ck"))
    with pytest.raises(ConfigError, match="sft.batch_size"):
        check_resumable("rl", saved.to_json(), now, Path("ck"))  # RL starts from that SFT


def test_settings_outside_the_stage_may_change():
    saved = get_config()
    now = get_config()
    now.mesh.fsdp = 2
    now.eval.max_examples = 0
    now.checkpoint.every_steps = 7
    now.rl.learning_rate = 1.0    # RL settings do not shape the SFT stage
    check_resumable("sft", saved.to_json(), now, Path("ck"))
    check_resumable("pretrain", saved.to_json(), now, Path("ck"))


def test_changed_optimizer_implementation_is_named():
    """sft.fused_optimizer changes the optimizer state's layout: the refusal names it (checked
    before the state is restored, see loop.train)."""
    saved, now = get_config(), get_config()
    now.sft.fused_optimizer = not saved.sft.fused_optimizer
    with pytest.raises(ConfigError, match=r"sft\.fused_optimizer: True -> False"):
        check_resumable("sft", saved.to_json(), now, Path("ck"))
