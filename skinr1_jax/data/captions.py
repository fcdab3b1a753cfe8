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

import numpy as np

from skinr1_jax.data import prompts, tasks
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


# --- Visual instruction items: the answer-by-letter skill, without disease knowledge. ---
#
# The paper's base (Qwen2.5-VL-Instruct) already answers an option question by letter; a
# random tiny model does not, and SFT alone did not teach it to map a named diagnosis to a
# shuffled letter (4-option accuracy stayed at chance). These items ask the real 4-option
# prompt (same wording, tags and option layout as data/tasks.py) about the image's *findings*:
# one option is a concept the renderer drew, three are concepts it did not. The thinking lists
# the findings, then copies each option line from the prompt and marks it visible or not (the
# check the SFT twins end with, data/sft_mix.py), then names the letter; the final field gives
# the letter then the option's text. Copying an option by its letter is what the SFT lookup
# needs and what SFT alone teaches unreliably (measured: 39% of option lines copied right).
# Options are concept words only, never a disease, so the model learns the format and the
# letter lookup while what the image means diagnostically stays for SFT and RL.

CONCEPT_QUESTION = "Which of these findings is visible in this image?"


def concept_pool(examples: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Every concept annotated on any example (sorted): the distractor pool."""
    return tuple(sorted({str(c) for ex in examples for c in ex.get("concepts", ())}))


def concept_question(example: Mapping[str, Any], pool: Sequence[str], rng: np.random.Generator,
                     fmt: tasks.TaskFormat, n_options: int = 4) -> dict[str, str]:
    """One {example_id, prompt, response, kind} concept question for an annotated example."""
    present = [str(c) for c in example["concepts"]]
    absent = sorted(set(pool) - set(present))
    if not present or len(absent) < n_options - 1:
        raise ValueError(f"example {example.get('id')!r}: needs a concept and {n_options - 1} "
                         f"absent ones in the pool, has {len(present)} and {len(absent)}")
    answer = present[int(rng.integers(len(present)))]
    picked = [answer] + [absent[j] for j in rng.choice(len(absent), n_options - 1, replace=False)]
    words = [T.findings([picked[j]])[0] for j in rng.permutation(n_options)]
    word = T.findings([answer])[0]
    letter = prompts.LETTERS[words.index(word)]
    prompt = prompts.mcq_prompt(words, question=CONCEPT_QUESTION, think_tag=fmt.think_tag,
                                final_tag=fmt.final_tag, malignancy_classes=fmt.malignancy_classes)
    think, final = fmt.think_tag, fmt.final_tag
    shown = set(T.findings(present))
    checks = "".join(f"\n{prompts.LETTERS[j]}: {w}, {'visible' if w in shown else 'not visible'}"
                     for j, w in enumerate(words))
    response = (f"<{think}>{caption(present)} Options:{checks}\nVisible: {letter}.</{think}>\n"
                f"<{final}>{letter}: {word}</{final}>")
    return {"example_id": str(example["id"]), "prompt": prompt, "response": response,
            "kind": "concept_question"}


def alignment_items(examples: Sequence[Mapping[str, Any]], *, questions_per_image: int,
                    seed: int, think_tag: str = "thinking",
                    final_tag: str = "final diagnosis") -> list[dict[str, str]]:
    """The pretrain set: every caption, then `questions_per_image` concept questions per
    annotated example (each from its own stable generator, so letters and distractors vary)."""
    items = caption_items(examples)
    if questions_per_image <= 0:
        return items
    annotated = [ex for ex in examples if len(ex.get("concepts", ())) > 0]
    fmt = tasks.TaskFormat(think_tag=think_tag, final_tag=final_tag,
                           malignancy_classes=tasks.malignancy_classes_of(examples))
    pool = concept_pool(annotated)
    for k in range(questions_per_image):
        items += [concept_question(ex, pool, tasks.example_rng(seed, str(ex["id"]), f"concept{k}"),
                                   fmt) for ex in annotated]
    return items
