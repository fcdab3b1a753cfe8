"""Image-caption pairs for the tiny model's vision-language alignment (the `pretrain` stage).

A real base VLM (Qwen2.5-VL-Instruct) arrives already able to see; the embedded default's random
one does not, and the few image-dependent tokens of a reasoning trajectory (~5 of ~120) teach its
vision tower too slowly for a CPU budget. So, as LLaVA-style VLMs are aligned before instruction
tuning, the tiny model first learns to list what an image shows: the ground-truth concepts the
renderer drew (or a dataset annotated), never the diagnosis, which stays for SFT and RL to teach.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from skinr1_jax.trajectories import templates as T

CAPTION_PROMPT = "Describe the visible skin findings in this image."


def caption(concepts: Sequence[str]) -> str:
    """'The image shows papule, macule and hyperpigmentation.': every concept, in the given
    (dataset) order, so the target is a function of the image alone."""
    if not concepts:
        raise ValueError("caption: an example without concepts has nothing to describe")
    return f"The image shows {T.join_words(T.findings(concepts))}."


def caption_items(examples: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One {example_id, prompt, response, kind} per example that has concepts, in the
    examples' order. Raises when none has any (a label-only dataset cannot be aligned on)."""
    items = [{"example_id": str(ex["id"]), "prompt": CAPTION_PROMPT,
              "response": caption(ex["concepts"]), "kind": "caption"}
             for ex in examples if len(ex.get("concepts", ())) > 0]
    if not items:
        raise ValueError("caption_items: no example has concept annotations to caption; a "
                         "label-only dataset needs a model that already sees (pretrain.steps=0)")
    return items
