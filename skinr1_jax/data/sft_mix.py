"""The SFT set: the paper's trajectories, plus the same reasoning answering task-format
questions.

The paper's 7B model follows the RL prompt's answer format (`<final diagnosis>LETTER ...`)
zero-shot after SFT on `<diagnosis>` trajectories. A small model cannot, so with
`generate.question_share` > 0 each trajectory's thinking is also paired with a question about the
same image (4-option, hierarchical, DDx, benign/malignant or open-ended) whose final field gives
the option letter (or the disease name) and the malignancy. Set it to 0 for the paper's recipe.

With `generate.option_check`, an option question's thinking also ends with the diagnosis's
taxonomy path and a check of each option against it, then names the letter. A large model maps
its diagnosis onto an option letter in one step; a two-layer model cannot learn that lookup from
SFT alone (measured: 4-option accuracy at chance while open-ended leaf accuracy was 0.44). Each
step of the check is a copy or a local comparison instead; how far that gets a two-layer model
is measured in the README ("A letter-answering base").
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from skinr1_jax.data import prompts, tasks
from skinr1_jax.taxonomy import Taxonomy
from skinr1_jax.trajectories import split_response

# Relative frequency of each question kind in the mixture.
QUESTION_KINDS = (("mcq", 0.4), ("open", 0.3), ("hierarchical", 0.1), ("ddx", 0.1),
                  ("b_or_m", 0.1))


def final_field(question: tasks.Question, taxonomy: Taxonomy) -> str:
    """What the final tag holds for a correct answer: `B: name, benign` or `name, benign`."""
    malignancy = prompts.MALIGNANCY_TEXT[question.malignancy]
    if question.answer < 0:
        return f"{taxonomy.name(question.node)}, {malignancy}"
    letter = prompts.LETTERS[question.answer]
    if question.kind == "b_or_m":
        return f"{letter}: {question.options[question.answer]}"
    return f"{letter}: {question.options[question.answer]}, {malignancy}"


def _role(index: int, path_len: int) -> str:
    if index == path_len - 1:
        return "the diagnosis"
    return ("its group", "its subgroup")[index] if index < 2 else f"its level-{index + 1} ancestor"


def option_check(question: tasks.Question, taxonomy: Taxonomy) -> str:
    """` Its path: g > s > d. Options:` then one `A: x, off its path` line per option (the
    prompt's own `A: x` layout, so each line starts as a copy of the prompt's), then `Most
    specific on its path: B.`, for an option question about `question.node`."""
    path = taxonomy.path(question.node)
    lines = []
    for letter, name, node in zip(prompts.LETTERS, question.options, question.option_nodes):
        role = _role(path.index(node), len(path)) if node in path else "off its path"
        lines.append(f"\n{letter}: {name}, {role}")
    return (f" Its path: {' > '.join(taxonomy.name(n) for n in path)}. Options:{''.join(lines)}"
            f"\nMost specific on its path: {prompts.LETTERS[question.answer]}.")


_FIRST_SENTENCE = re.compile(r"(.+?\.)(?:\s|$)")


def findings_thinking(thinking: str, diagnosis: str) -> str:
    """The trajectory's first sentence (what the image shows), then the diagnosis it leads to:
    the short thinking of `generate.option_thinking="findings"`, which puts the option check
    ~100 tokens closer to the prompt's options it copies."""
    m = _FIRST_SENTENCE.match(thinking.strip())
    if m is None:
        raise ValueError(f"thinking has no first sentence to keep: {thinking[:80]!r}")
    return f"{m.group(1)} The findings fit {diagnosis}."


@dataclasses.dataclass(frozen=True)
class WrittenCheck:
    """An option check as a response wrote it (`parse_option_check`)."""

    path: tuple[str, ...]                      # node names, root first
    lines: tuple[tuple[str, str, str], ...]    # (letter, option name, role) per line
    letter: str                                # "Most specific on its path: X."


_CHECK_RE = re.compile(r"Its path: (?P<path>[^\n]*?)\. Options:(?P<lines>(?:\n[^\n]*)*?)"
                       r"\nMost specific on its path: (?P<letter>[A-Z])\.")


def parse_option_check(text: str) -> WrittenCheck | None:
    """The last option check in `text` in `option_check`'s layout, or None when there is none.
    A line that is not `X: name, role` is kept as ("", line, "")."""
    matches = list(_CHECK_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    lines = []
    for line in m.group("lines").split("\n")[1:]:
        head, sep, role = line.rpartition(", ")
        if len(head) > 3 and head[1:3] == ": " and sep:
            lines.append((head[0], head[3:], role))
        else:
            lines.append(("", line, ""))
    return WrittenCheck(tuple(m.group("path").split(" > ")), tuple(lines), m.group("letter"))


def build_sft_items(trajectories: Sequence[Mapping[str, Any]],
                    examples: Sequence[Mapping[str, Any]], taxonomy: Taxonomy, ddx_graph: Any,
                    generate_cfg: Any, question_share: float, seed: int) -> list[dict[str, Any]]:
    """[{example_id, prompt, response, kind}] — each trajectory as written, then (with
    probability `question_share`, decided per trajectory from a stable hash)
    `generate_cfg.question_variants` task-format twins, each with its own question draw."""
    think, diag, final = generate_cfg.think_tag, generate_cfg.diagnosis_tag, generate_cfg.final_tag
    by_id = {str(e["id"]): e for e in examples}
    fmt = tasks.TaskFormat(think_tag=think, final_tag=final,
                           malignancy_classes=tasks.malignancy_classes_of(examples))
    pool = list(by_id.values())
    variants = int(generate_cfg.question_variants)
    if variants < 1:
        raise ValueError(f"generate.question_variants={variants}: expected >= 1")
    fixed = {"open": {q.example_id: q for q in tasks.open_set(pool, taxonomy, fmt=fmt).questions},
             "b_or_m": {q.example_id: q for q in tasks.b_or_m_set(pool, fmt=fmt).questions}}

    def drawn(s: int) -> dict[str, dict[str, tasks.Question]]:
        return {
            "mcq": {q.example_id: q for q in tasks.mcq_questions(pool, taxonomy, seed=s, fmt=fmt)},
            "hierarchical": {q.example_id: q for q in
                             tasks.hierarchical_set(pool, taxonomy, seed=s, fmt=fmt).questions},
            "ddx": {q.example_id: q for q in
                    tasks.ddx_set(pool, taxonomy, ddx_graph, seed=s, fmt=fmt).questions},
            **fixed}

    # Variant v draws its options and letters with its own seed: one fixed draw per image
    # lets a small model memorise the image's options instead of reading them from the prompt
    # (measured: SFT then wrote options that were not in the prompt).
    banks = [drawn(tasks.draw_seed(seed, v)) for v in range(variants)]
    kinds = [k for k, _ in QUESTION_KINDS]
    weights = [w for _, w in QUESTION_KINDS]
    items = []
    for n, traj in enumerate(trajectories):
        example_id = str(traj["example_id"])
        if example_id not in by_id:
            raise KeyError(f"trajectory {n} refers to example {example_id!r}, not in the dense split")
        items.append({"example_id": example_id, "prompt": traj["prompt"],
                      "response": traj["response"], "kind": traj["type"]})
        rng = tasks.example_rng(seed, f"{example_id}/{n}", "sft_mix")
        if question_share <= 0 or rng.random() >= question_share:
            continue
        parts = split_response(traj["response"], think, diag)
        if parts is None:
            raise ValueError(f"trajectory {n} ({traj['type']}) is not <{think}>..</{think}><{diag}>..</{diag}>")
        for bank in banks:
            kind = kinds[int(rng.choice(len(kinds), p=weights))]
            question = bank[kind].get(example_id) or bank["mcq"][example_id]
            thinking = parts[0]
            if generate_cfg.option_check and tasks.options_are_nodes(question):
                if generate_cfg.option_thinking == "findings":
                    thinking = findings_thinking(thinking, taxonomy.name(question.node))
                thinking += option_check(question, taxonomy)
            response = (f"<{think}>{thinking}</{think}>\n"
                        f"<{final}>{final_field(question, taxonomy)}</{final}>")
            items.append({"example_id": example_id, "prompt": question.prompt,
                          "response": response, "kind": f"question_{question.kind}"})
    return items
