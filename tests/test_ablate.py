"""The ablation command's arithmetic and override flags."""

import math

import numpy as np
import pytest

from skinr1_jax.stages.ablate import ablation_markdown, mean_ci, override_flags


def test_mean_ci_matches_the_t_interval_formula():
    values = [0.2, 0.4, 0.9]
    mean, half = mean_ci(values)
    sd = np.std(values, ddof=1)
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(4.303 * sd / math.sqrt(3))


def test_mean_ci_single_value_and_nan_are_handled():
    assert mean_ci([0.3])[0] == 0.3 and math.isnan(mean_ci([0.3])[1])
    assert mean_ci([0.3, float("nan"), 0.5])[0] == pytest.approx(0.4)
    assert all(math.isnan(x) for x in mean_ci([]))


def test_override_flags_are_split_and_checked():
    assert override_flags("--config.sft.steps=0 --config.rl.init_from=base") == [
        "--config.sft.steps=0", "--config.rl.init_from=base"]
    assert override_flags("") == []
    with pytest.raises(ValueError, match="rl.steps"):
        override_flags("rl.steps=0")


def test_every_shipped_variant_is_a_valid_config():
    from configs import ablations

    config = ablations.get_config()
    for name, overrides in config.ablation.variants.items():
        for flag in override_flags(overrides):
            key, value = flag[len("--config."):].split("=", 1)
            node = config
            for part in key.split(".")[:-1]:
                node = node[part]
            assert key.split(".")[-1] in node, (name, key)


def test_markdown_has_one_row_per_variant():
    from skinr1_jax.stages.ablate import METRICS

    table = {"full": {m: (0.5, 0.1) for m in METRICS},
             "sft_only": {m: (0.25, float("nan")) for m in METRICS}}
    md = ablation_markdown(table, 3).splitlines()
    rows = [l for l in md if l.startswith("| full") or l.startswith("| sft_only")]
    assert len(rows) == 2
    assert rows[0].count("0.500 ± 0.100") == len(METRICS)
    assert "±" not in rows[1] and rows[1].count("0.250") == len(METRICS)


def test_metrics_never_evaluated_are_left_out():
    from skinr1_jax.stages.ablate import METRICS

    nan = float("nan")
    table = {"full": {m: ((0.5, 0.1) if m == "acc_leaf" else (nan, nan)) for m in METRICS}}
    header = ablation_markdown(table, 3).splitlines()[2]
    assert header == "| variant | acc_leaf |"


def test_pretraining_is_shared_only_when_no_variant_changes_it():
    from configs import ablations
    from skinr1_jax.stages.ablate import shares_pretraining

    config = ablations.get_config()
    config.pretrain.keep = "all"
    config.ablation.variants.no_ddx_step = "--config.generate.types=('basic',)"
    # The aligned language model depends on the tokenizer, which generate.* changes.
    assert not shares_pretraining(config)
    del config.ablation.variants["no_ddx_step"]
    assert shares_pretraining(config) == (config.pretrain.steps > 0)
    config.pretrain.keep = "vision"
    config.ablation.variants.no_ddx_step = "--config.generate.types=('basic',)"
    assert shares_pretraining(config) == (config.pretrain.steps > 0)
    config.pretrain.steps = 10
    config.ablation.variants.short_pretrain = "--config.pretrain.steps=5"
    with pytest.raises(ValueError, match="short_pretrain"):
        shares_pretraining(config)


def test_only_rl_and_eval_variants_share_the_sft_model():
    from configs import ablations
    from skinr1_jax.stages.ablate import shares_sft

    variants = ablations.get_config().ablation.variants
    shared = {v for v, o in variants.items() if shares_sft(override_flags(o))}
    assert shared == {"sft_only", "full", "flat_reward"}  # not base, rl_without_sft, no_ddx_step
    assert not shares_sft(["--config.generate.types=('basic',)"])
    assert not shares_sft(["--config.seed=3"])
    assert shares_sft(["--config.eval.max_examples=10", "--config.rl.beta=0"])
