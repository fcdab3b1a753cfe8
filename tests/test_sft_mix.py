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
    assert len(twins) == cfg.generate.question_variants * len(trajectories)
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


def test_option_check_names_every_option_and_the_answer(setup):
    cfg, taxonomy, kb, dense, trajectories = setup
    cfg = ConfigDict(cfg.to_dict())
    cfg.generate.option_check = True
    items = build_sft_items(trajectories, dense, taxonomy, kb.ddx_graph(), cfg.generate, 1.0, 0)
    by_id = {e["id"]: e for e in dense}
    parser = ResponseParser(num_options=26)
    checked = [i for i in items if i["kind"] in ("question_mcq", "question_hierarchical", "question_ddx")]
    assert checked
    for item in checked:
        thinking = item["response"].split("</thinking>")[0]
        path = taxonomy.path(by_id[item["example_id"]]["node"])
        assert f"Its path: {' > '.join(taxonomy.name(n) for n in path)}." in thinking
        listed = thinking.split(" Options:\n")[1].split("\nMost specific on its path: ")
        options = [l for l in item["prompt"].splitlines() if len(l) > 2 and l[1:3] == ": "]
        checks = listed[0].split("\n")
        assert len(checks) == len(options)
        for option, check in zip(options, checks):
            name, role = check.rsplit(", ", 1)
            assert name == option
            node = taxonomy.resolve(option[3:])
            assert (role == "off its path") == (node not in path), check
            if node == path[-1]:
                assert role == "the diagnosis"
        # The letter the check concludes with is the one the final field gives.
        assert chr(65 + parser.option(parser.final_field(item["response"]))) == listed[1][0]
    # b_or_m and open twins have nothing to look up.
    assert not any(" Options:" in i["response"] for i in items
                   if i["kind"] in ("question_b_or_m", "question_open"))


def test_option_check_off_keeps_the_thinking_as_written(setup):
    cfg, taxonomy, kb, dense, trajectories = setup
    cfg = ConfigDict(cfg.to_dict())
    cfg.generate.option_check = False
    items = build_sft_items(trajectories, dense, taxonomy, kb.ddx_graph(), cfg.generate, 1.0, 0)
    thinking = {t["response"].split("</thinking>")[0] for t in trajectories}
    twins = [i for i in items if i["kind"].startswith("question_")]
    assert all(i["response"].split("</thinking>")[0] in thinking for i in twins)


def test_variants_redraw_options_and_letters_per_twin(setup):
    cfg, taxonomy, kb, dense, trajectories = setup
    cfg = ConfigDict(cfg.to_dict())
    items = {}
    for variants in (1, 6):
        cfg.generate.question_variants = variants
        items[variants] = build_sft_items(trajectories, dense, taxonomy, kb.ddx_graph(),
                                          cfg.generate, 1.0, 0)
    # Variant 0 is the single-draw mixture, so question_variants=1 is unchanged.
    twins_of = {v: [i for i in its if i["kind"].startswith("question_")] for v, its in items.items()}
    assert len(twins_of[6]) == 6 * len(twins_of[1])
    assert twins_of[6][::6] == twins_of[1]
    # The same example's 4-option twins show different options or orders: nothing to memorise.
    prompts_by_example: dict[str, set[str]] = {}
    for item in twins_of[6]:
        if item["kind"] == "question_mcq":
            prompts_by_example.setdefault(item["example_id"], set()).add(item["prompt"])
    repeated = [p for p in prompts_by_example.values() if len(p) > 1]
    assert repeated and len(repeated) >= len(prompts_by_example) // 2
    cfg.generate.question_variants = 0
    with pytest.raises(ValueError, match="question_variants"):
        build_sft_items(trajectories, dense, taxonomy, kb.ddx_graph(), cfg.generate, 1.0, 0)


def test_findings_thinking_keeps_the_first_sentence_before_the_check(setup):
    cfg, taxonomy, kb, dense, trajectories = setup
    cfg = ConfigDict(cfg.to_dict())
    cfg.generate.option_check, cfg.generate.option_thinking = True, "findings"
    items = build_sft_items(trajectories, dense, taxonomy, kb.ddx_graph(), cfg.generate, 1.0, 0)
    by_id = {e["id"]: e for e in dense}
    first = {t["response"].split("<thinking>")[1].split(". ")[0] + "." for t in trajectories}
    checked = [i for i in items if " Options:\n" in i["response"]]
    assert checked
    for item in checked:
        thinking = item["response"].split("<thinking>")[1].split("</thinking>")[0]
        head, rest = thinking.split(" The findings fit ", 1)
        assert head in first
        assert rest.startswith(taxonomy.name(by_id[item["example_id"]]["node"]) + ". Its path: ")
    # Open-ended twins keep the whole trajectory's thinking.
    full = {t["response"].split("</thinking>")[0] for t in trajectories}
    assert all(i["response"].split("</thinking>")[0] in full
               for i in items if i["kind"] == "question_open")
    with pytest.raises(ValueError, match="first sentence"):
        from skinr1_jax.data.sft_mix import findings_thinking
        findings_thinking("no full stop here", "psoriasis")
