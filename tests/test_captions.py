"""Alignment captions: the target names exactly the image's annotated findings, no diagnosis."""

from __future__ import annotations

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
