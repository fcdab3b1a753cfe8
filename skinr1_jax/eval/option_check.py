"""Where a model's option answers go wrong, read from the option checks it writes
(`generate.option_check`, data/sft_mix.py): the taxonomy path it states, the option lines it
copies from the prompt, and whether its letter follows from them.

Measured on the letter-answering recipe (README, "A letter-answering base"), these separate a
wrong diagnosis (`path_right`) from a failed lookup (`lines_copied`, `follows_path`), and
`implied_accuracy` is what the model would score if its letter always followed its own path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skinr1_jax.data import prompts
from skinr1_jax.data.sft_mix import parse_option_check
from skinr1_jax.taxonomy import Taxonomy

RATE_KEYS = ("checked", "path_right", "lines_copied", "misaligned_copies", "follows_path",
             "implied_accuracy")


def implied_answer(options: Sequence[str], path: Sequence[str]) -> int:
    """Index of the option deepest on `path` (names, root first); -1 when none is on it."""
    depth = {name: i for i, name in enumerate(path)}
    on_path = [(depth[o], i) for i, o in enumerate(options) if o in depth]
    return max(on_path)[1] if on_path else -1


def _lines(question, check) -> tuple[int, int]:
    """(option lines of `check` that copy the prompt's line i exactly, lines that name another
    of the prompt's options) over the question's options."""
    copied = misaligned = 0
    for i, (letter, name, _) in enumerate(check.lines[:len(question.options)]):
        if letter == prompts.LETTERS[i] and name == question.options[i]:
            copied += 1
        elif name in question.options:
            misaligned += 1
    return copied, misaligned


def check_scores(questions: Sequence, predicted: Sequence[int], texts: Sequence[str]) -> np.ndarray:
    """f32[B] in [0, 1] per response: half the share of option lines it copies exactly, half
    whether its answer letter is the option deepest on the path it wrote (0 without a check).

    The RL lookup reward (`rl.reward.check_weight`): it pays for reading the options and
    following one's own path, whichever path, where the option score pays only for the right
    letter; a small model's letters follow its written path in about half its answers."""
    if len(questions) != len(predicted) or len(questions) != len(texts):
        raise ValueError(f"{len(questions)} questions, {len(predicted)} answers, {len(texts)} texts")
    out = np.zeros(len(questions), np.float32)
    for i, (q, pred, text) in enumerate(zip(questions, predicted, texts)):
        check = parse_option_check(text)
        if check is None or not q.options:
            continue
        copied, _ = _lines(q, check)
        follows = int(pred) >= 0 and int(pred) == implied_answer(q.options, check.path)
        out[i] = 0.5 * copied / len(q.options) + 0.5 * follows
    return out


def option_check_rates(questions: Sequence, predicted: Sequence[int], texts: Sequence[str],
                       taxonomy: Taxonomy) -> dict[str, float]:
    """Shares over all questions (a response without a check counts as failing each), and for
    the two line rates over all option lines: `checked` (a check is there), `path_right` (its
    path is the truth's), `lines_copied` (line i is the prompt's option i), `misaligned_copies`
    (a line names another of the prompt's options), `follows_path` (the answer letter is the
    option deepest on the written path), `implied_accuracy` (that option is the right one)."""
    if len(questions) != len(predicted) or len(questions) != len(texts):
        raise ValueError(f"{len(questions)} questions, {len(predicted)} answers, {len(texts)} texts")
    counts = dict.fromkeys(RATE_KEYS, 0)
    lines_total = 0
    for q, pred, text in zip(questions, predicted, texts):
        lines_total += len(q.options)
        check = parse_option_check(text)
        if check is None:
            continue
        counts["checked"] += 1
        counts["path_right"] += check.path == tuple(taxonomy.name(n) for n in taxonomy.path(q.node))
        copied, misaligned = _lines(q, check)
        counts["lines_copied"] += copied
        counts["misaligned_copies"] += misaligned
        implied = implied_answer(q.options, check.path)
        counts["follows_path"] += int(pred) == implied
        counts["implied_accuracy"] += implied == q.answer
    n = max(len(questions), 1)
    per_line = ("lines_copied", "misaligned_copies")
    return {k: float(v / max(lines_total, 1) if k in per_line else v / n)
            for k, v in counts.items()}

