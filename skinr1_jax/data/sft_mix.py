"""The SFT set: the paper's trajectories, plus the same reasoning answering task-format
questions.

The paper's 7B model follows the RL prompt's answer format (`<final diagnosis>LETTER ...`)
zero-shot after SFT on `<diagnosis>` trajectories. A small model cannot, so with
`generate.question_share` > 0 each trajectory's thinking is also paired with a question about the
same image (4-option, hierarchical, DDx, benign/malignant or open-ended) whose final field gives
the option letter (or the disease name) and the malignancy. Set it to 0 for the paper's recipe.
"""

from __future__ import annotations

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


def build_sft_items(trajectories: Sequence[Mapping[str, Any]],
                    examples: Sequence[Mapping[str, Any]], taxonomy: Taxonomy, ddx_graph: Any,
                    generate_cfg: Any, question_share: float, seed: int) -> list[dict[str, Any]]:
    """[{example_id, prompt, response, kind}] — each trajectory as written, then (with
    probability `question_share`, decided per trajectory from a stable hash) a task-format twin."""
    think, diag, final = generate_cfg.think_tag, generate_cfg.diagnosis_tag, generate_cfg.final_tag
    by_id = {str(e["id"]): e for e in examples}
    fmt = tasks.TaskFormat(think_tag=think, final_tag=final,
                           malignancy_classes=tasks.malignancy_classes_of(examples))
    pool = list(by_id.values())
    banks = {
        "mcq": {q.example_id: q for q in tasks.mcq_questions(pool, taxonomy, seed=seed, fmt=fmt)},
        "open": {q.example_id: q for q in tasks.open_set(pool, taxonomy, fmt=fmt).questions},
        "hierarchical": {q.example_id: q for q in
                         tasks.hierarchical_set(pool, taxonomy, seed=seed, fmt=fmt).questions},
        "ddx": {q.example_id: q for q in
                tasks.ddx_set(pool, taxonomy, ddx_graph, seed=seed, fmt=fmt).questions},
        "b_or_m": {q.example_id: q for q in tasks.b_or_m_set(pool, fmt=fmt).questions},
    }
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
        kind = kinds[int(rng.choice(len(kinds), p=weights))]
        question = banks[kind].get(example_id) or banks["mcq"][example_id]
        response = f"<{think}>{parts[0]}</{think}>\n<{final}>{final_field(question, taxonomy)}</{final}>"
        items.append({"example_id": example_id, "prompt": question.prompt, "response": response,
                      "kind": f"question_{question.kind}"})
    return items
