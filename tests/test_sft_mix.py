"""The SFT mixture's task-format twins teach exactly what the RL reward parser scores."""

from __future__ import annotations

import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import default
from skinr1_jax.data.sft_mix import build_sft_items
from skinr1_jax.data.synthetic import build_splits
from skinr1_jax.eval.evaluate import answer_node
from skinr1_jax.knowledge import load_default_kb
from skinr1_jax.knowledge.vocab import MALIGNANCY_CLASSES
from skinr1_jax.taxonomy import load_default_taxonomy
from skinr1_jax.train.rewards import ResponseParser
from skinr1_jax.trajectories import generate_trajectories


@pytest.fixture(scope="module")
def setup():
    cfg = default.get_config()
    cfg.data.dense_per_class, cfg.data.sparse_per_class = 2, 1
    cfg.data.val_per_class = cfg.data.test_per_class = cfg.data.ood_per_class = 1
    cfg.generate.per_diagnosis_per_type = 1
    taxonomy = load_default_taxonomy()
    kb = load_default_kb(taxonomy)
    dense = build_splits(cfg.data, taxonomy, kb, seed=0)["dense_train"]
    trajectories = generate_trajectories(dense, taxonomy, kb, cfg.generate, 0).trajectories
    return cfg, taxonomy, kb, dense, trajectories


def test_every_trajectory_kept_and_twins_parse_to_the_truth(setup):
    cfg, taxonomy, kb, dense, trajectories = setup
    items = build_sft_items(trajectories, dense, taxonomy, kb.ddx_graph(), cfg.generate, 1.0, 0)
    originals = [i for i in items if not i["kind"].startswith("question_")]
    twins = [i for i in items if i["kind"].startswith("question_")]
    assert [i["response"] for i in originals] == [t["response"] for t in trajectories]
    assert len(twins) == len(trajectories)
    assert len({i["kind"] for i in twins}) >= 4
    parser = ResponseParser(num_options=26)
    by_id = {e["id"]: e for e in dense}
    for item in twins:
        text = item["response"]
        assert parser.format_ok(text), text
        final = parser.final_field(text)
        example = by_id[item["example_id"]]
        truth = MALIGNANCY_CLASSES.index(example["malignancy"])
        assert parser.malignancy(final) == truth, final
        if item["kind"] == "question_open":
            assert answer_node(final, taxonomy) == example["node"], final
        else:
            letter = parser.option(final)
            line = [l for l in item["prompt"].splitlines() if l.startswith(f"{chr(65 + letter)}: ")]
            assert line, (item["prompt"], final)
            option = line[0][3:]
            if item["kind"] != "question_b_or_m":
                node = taxonomy.resolve(option)
                assert taxonomy.is_ancestor(node, example["node"]), (option, example["label"])


def test_question_share_zero_is_the_papers_recipe(setup):
    cfg, taxonomy, kb, dense, trajectories = setup
    items = build_sft_items(trajectories, dense, taxonomy, kb.ddx_graph(), cfg.generate, 0.0, 0)
    assert [i["response"] for i in items] == [t["response"] for t in trajectories]


def test_unknown_example_is_named(setup):
    cfg, taxonomy, kb, dense, trajectories = setup
    bad = [dict(trajectories[0], example_id="nope")]
    with pytest.raises(KeyError, match="nope"):
        build_sft_items(bad, dense, taxonomy, kb.ddx_graph(), cfg.generate, 1.0, 0)
