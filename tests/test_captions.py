"""Alignment captions: the target names exactly the image's annotated findings, no diagnosis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from skinr1_jax.data.captions import CAPTION_PROMPT, caption, caption_items
from skinr1_jax.trajectories import templates as T


def _example(i: int, concepts: list[str], label: str = "psoriasis") -> dict:
    return {"id": f"ex{i}", "concepts": concepts, "label": label}


def test_caption_lists_every_finding_in_order():
    concepts = ["plaque", "scale", "erythema"]
    text = caption(concepts)
    words = T.findings(concepts)
    positions = [text.index(w) for w in words]
    assert positions == sorted(positions)
    assert text.endswith(".")


def test_items_skip_unannotated_examples_and_never_name_the_diagnosis():
    items = caption_items([_example(0, ["plaque", "scale"]), _example(1, []),
                           _example(2, ["macule"], label="vitiligo")])
    assert [it["example_id"] for it in items] == ["ex0", "ex2"]
    assert all(it["prompt"] == CAPTION_PROMPT for it in items)
    assert "psoriasis" not in items[0]["response"] and "vitiligo" not in items[1]["response"]


def test_label_only_datasets_are_refused():
    with pytest.raises(ValueError, match="concept"):
        caption_items([_example(0, []), _example(1, [])])
    with pytest.raises(ValueError, match="nothing to describe"):
        caption([])


def test_kept_vision_joins_the_initial_language_model():
    import numpy as np

    from skinr1_jax.stages.pretrain import kept_variables

    initial = {"params": {"visual": {"w": np.zeros(2)}, "language_model": {"w": np.zeros(3)},
                          "lm_head": {"w": np.zeros(1)}}}
    trained = {"params": {"visual": {"w": np.ones(2)}, "language_model": {"w": np.ones(3)},
                          "lm_head": {"w": np.ones(1)}}}
    kept = kept_variables(trained, initial, "vision")
    assert kept["params"]["visual"]["w"].sum() == 2
    assert kept["params"]["language_model"]["w"].sum() == 0
    assert kept["params"]["lm_head"]["w"].sum() == 0
    assert kept_variables(trained, initial, "all") is trained
    with pytest.raises(ValueError, match="pretrain.keep"):
        kept_variables(trained, initial, "text")


def _annotated(n: int) -> list[dict]:
    concept_sets = [["plaque", "scale", "erythema"], ["macule", "hyperpigmentation"],
                    ["papule", "umbilicated"], ["nodule", "ulcer", "crust"]]
    return [{**_example(i, concept_sets[i % 4]), "malignancy": "benign", "node": 1}
            for i in range(n)]


def test_concept_question_is_the_mcq_format_answered_by_the_visible_finding():
    from skinr1_jax.data import prompts, tasks
    from skinr1_jax.data.captions import CONCEPT_QUESTION, concept_pool, concept_question
    from skinr1_jax.train.rewards import parse_responses

    examples = _annotated(8)
    pool = concept_pool(examples)
    fmt = tasks.TaskFormat()
    for ex in examples:
        item = concept_question(ex, pool, tasks.example_rng(0, ex["id"], "c"), fmt)
        lines = item["prompt"].split("\n")
        assert lines[0] == CONCEPT_QUESTION
        options = [line.split(": ", 1)[1] for line in lines[1:5]]
        # The rest of the prompt is exactly the real option question's instructions.
        assert item["prompt"] == prompts.mcq_prompt(options, question=CONCEPT_QUESTION)
        parsed = parse_responses([item["response"]])
        assert parsed["format_ok"][0] == 1
        chosen = options[parsed["option"][0]]
        visible = T.findings(ex["concepts"])
        assert chosen in visible
        assert sum(o in visible for o in options) == 1
        # The thinking copies every option line and marks the visible one.
        checks = item["response"].split("Options:\n")[1].split("\nVisible: ")[0].split("\n")
        assert [c.rsplit(", ", 1)[0] for c in checks] == lines[1:5]
        assert [c.endswith(", visible") for c in checks] == [o in visible for o in options]
        assert "psoriasis" not in item["prompt"] + item["response"]


def test_alignment_items_add_questions_with_varied_letters():
    from skinr1_jax.data.captions import alignment_items
    from skinr1_jax.train.rewards import parse_responses

    examples = _annotated(40)
    assert alignment_items(examples, questions_per_image=0, seed=0) == caption_items(examples)
    items = alignment_items(examples, questions_per_image=2, seed=0)
    questions = [it for it in items if it["kind"] == "concept_question"]
    assert len(items) == 3 * 40 and len(questions) == 80
    letters = parse_responses([q["response"] for q in questions])["option"]
    assert set(letters.tolist()) == {0, 1, 2, 3}
    assert items == alignment_items(examples, questions_per_image=2, seed=0)


def test_pretrain_says_when_rows_lose_their_answers(tmp_path):
    # A caption row is ~76 tokens (prompt, image tokens and template 63): 72 cuts its answer
    # (captions only: a concept question's prompt alone is longer).
    workdir = tmp_path / "wd"
    cmd = [sys.executable, "-m", "launch", "--config", "configs/ci.py", "--stages=generate,pretrain",
           f"--config.workdir={workdir}", "--config.pretrain.max_seq_len=72",
           "--config.pretrain.questions_per_image=0"]
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("pretrain.max_seq_len=72 tokens are truncated") == 1, out.stdout[-3000:]
