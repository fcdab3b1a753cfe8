"""Command `diagnose`: run a saved model on image files and print, per image, its reasoning,
its diagnosis with the taxonomy path (group > subgroup > disease), the malignancy it states and
the differentials it considered.

The model is asked the SFT instruction it was trained on (greedy decoding), whose answer reads
`<thinking>...</thinking><diagnosis>DX. DX is a subtype of ..., and is generally ...</diagnosis>`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from skinr1_jax.taxonomy import UNKNOWN, Taxonomy
from skinr1_jax.trajectories.templates import MALIGNANCY_WORDS


@dataclass(frozen=True)
class Reading:
    """What one answer says; None where the answer lacks that part."""
    thinking: str | None
    diagnosis: str | None          # the disease name (first sentence of the diagnosis block)
    node: int                      # its taxonomy node, UNKNOWN when it does not resolve
    malignancy: str | None         # as stated, e.g. "benign", "precancerous (in situ)"
    differentials: tuple[int, ...]  # other nodes named in the thinking, most specific only
    well_formed: bool


def _error(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _block(text: str, tag: str) -> str | None:
    """The text after `<tag>` up to the next tag (its closing one, normally) or the end."""
    m = re.search(rf"<{re.escape(tag)}>([^<]*)", text, re.I)
    return m.group(1).strip() if m else None


_STATED = re.compile(r"\bis\s+generally\s+(.+?)\s*\.?\s*$", re.S | re.I)
# Longest first, so "non-neoplastic" is not read as a bare "neoplastic" word of another class.
_WORDS = sorted(set(MALIGNANCY_WORDS.values()), key=len, reverse=True)


def stated_malignancy(diagnosis_block: str) -> str | None:
    """The malignancy the answer states: its 'is generally X' clause, else a class word in it."""
    m = _STATED.search(diagnosis_block)
    if m:
        return m.group(1)
    lowered = diagnosis_block.lower()
    for word in _WORDS:
        if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", lowered):
            return word
    return None


def read_answer(text: str, taxonomy: Taxonomy, think_tag: str = "thinking",
                diagnosis_tag: str = "diagnosis") -> Reading:
    """Parse one generated answer leniently: a missing closing tag still yields its block."""
    from skinr1_jax.trajectories.rephrase import mentioned_nodes
    from skinr1_jax.trajectories.verify import node_of, split_response

    thinking = _block(text, think_tag) or None
    block = _block(text, diagnosis_tag) or None
    diagnosis = block.split(". ", 1)[0].strip().rstrip(".") if block else None
    node = node_of(diagnosis, taxonomy) if diagnosis else UNKNOWN
    mentioned = mentioned_nodes(thinking or "", taxonomy) - {UNKNOWN, node}
    if node != UNKNOWN:
        mentioned -= set(taxonomy.path(node))
    # A group named on the way to a disease is not a differential: keep the most specific.
    specific = {n for n in mentioned
                if not any(o != n and taxonomy.is_ancestor(n, o) for o in mentioned)}
    return Reading(thinking, diagnosis, node, stated_malignancy(block) if block else None,
                   tuple(sorted(specific, key=taxonomy.name)),
                   split_response(text, think_tag, diagnosis_tag) is not None)


def format_reading(image: str, index: int, total: int, reading: Reading, raw: str,
                   taxonomy: Taxonomy, think_tag: str, diagnosis_tag: str) -> str:
    """The printed section for one image."""
    if reading.node == UNKNOWN:
        path = "unresolved (not a disease of the taxonomy)" if reading.diagnosis else "unresolved"
    else:
        path = " > ".join(taxonomy.name(i) for i in taxonomy.path(reading.node))
    lines = [
        f"=== image {index}/{total}: {image}",
        f"reasoning: {reading.thinking or f'(none: the answer has no <{think_tag}> block)'}",
        f"diagnosis: {reading.diagnosis or f'(none: the answer has no <{diagnosis_tag}> block)'}",
        f"taxonomy path: {path}",
        f"malignancy: {reading.malignancy or '(not stated)'}",
        "differentials: " + (", ".join(taxonomy.name(i) for i in reading.differentials) or "(none named)"),
    ]
    if not reading.well_formed:
        lines.append(f"raw answer (not in the trained format): {raw!r}")
    return "\n".join(lines)


def instruction(generate_cfg: ConfigDict) -> str:
    """The SFT instruction that asks for the most reasoning the model was trained to give:
    the hierarchy walk (several candidates), else the DDx comparison (one alternative), else
    the basic one (no alternatives)."""
    from skinr1_jax.trajectories.prompts import DDX_TYPES, WALK_TYPES, sft_prompt

    types = set(generate_cfg.types)
    kind = next((t for t in (*WALK_TYPES, *DDX_TYPES) if t in types), "basic")
    return sft_prompt(kind, generate_cfg)


def diagnose(config: ConfigDict, checkpoint: str | Path, images: Sequence[str]) -> list[tuple[str, str]]:
    """(image, answer text) for each image file, greedy, with the model saved at `checkpoint`.
    Raises ImageError / SavedModelError / CheckpointError naming the bad file or folder."""
    from skinr1_jax.data.pipeline import encode_prompt
    from skinr1_jax.model.image_processing import load_image
    from skinr1_jax.model.saved import load_model
    from skinr1_jax.rollout import greedy_texts, make_sampler

    arrays = [load_image(path) for path in images]  # before the model: a bad file fails fast
    model_cfg, variables, tokenizer = load_model(checkpoint)
    text = instruction(config.generate)
    encoded = [encode_prompt(tokenizer, text, image, model_cfg, min_pixels=int(config.data.min_pixels),
                             max_pixels=int(config.data.max_pixels), example_id=str(path))
               for path, image in zip(images, arrays)]
    answers = greedy_texts(make_sampler(model_cfg, tokenizer), variables, tokenizer, encoded,
                           batch_size=min(len(encoded), int(config.eval.batch_size)),
                           max_len=int(config.data.max_seq_len),
                           max_new_tokens=int(config.eval.max_new_tokens))
    return list(zip(images, answers))


def command(config: ConfigDict, flags: Any) -> int:
    if not flags.checkpoint or not flags.image:
        return _error("diagnose needs --checkpoint DIR (a saved model: model_config.json, params/, "
                      "tokenizer/) and at least one --image FILE", 2)
    from skinr1_jax.taxonomy import load_default_taxonomy
    from skinr1_jax.train.checkpoint import CheckpointError

    try:
        results = diagnose(config, flags.checkpoint, list(flags.image))
    # ImageError and SavedModelError are ValueErrors naming their file or folder; another
    # ValueError is e.g. a prompt longer than data.max_seq_len.
    except (CheckpointError, OSError, ValueError) as e:
        return _error(str(e))
    taxonomy = load_default_taxonomy()
    tags = (config.generate.think_tag, config.generate.diagnosis_tag)
    for i, (image, answer) in enumerate(results, 1):
        reading = read_answer(answer, taxonomy, *tags)
        print(format_reading(image, i, len(results), reading, answer, taxonomy, *tags) + "\n")
    return 0
