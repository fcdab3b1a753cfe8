"""Prompt texts for the RL and evaluation tasks (our wording of the paper's intent).

The paper's RL/eval prompt asks the model to reason inside a thinking tag, then give, inside a
final-diagnosis tag, only the letter of the single most likely option (the most fine-grained
when several fit) and the lesion's malignancy. The reward parser reads the first letter after
the opening final tag, so the instructions insist that the letter comes first. Tag names are
parameters because the config owns them (`generate.think_tag`, `generate.final_tag`).
"""

from __future__ import annotations

from collections.abc import Sequence

MCQ_QUESTION = "What type of abnormality is present in this image?"
B_OR_M_QUESTION = "What is the malignancy status of the lesion in this image?"
OPEN_QUESTION = "What skin disease is shown in this image?"

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_OPTIONS = len(LETTERS)

# How a malignancy class is written in prompts and read back from answers.
MALIGNANCY_TEXT = {
    "benign": "benign",
    "malignant": "malignant",
    "precancerous_in_situ": "precancerous in situ",
    "non_neoplastic": "non-neoplastic",
}
PAPER_MALIGNANCY_CLASSES = ("benign", "malignant", "precancerous_in_situ")


def _class_list(classes: Sequence[str]) -> str:
    words = []
    for c in classes:
        if c not in MALIGNANCY_TEXT:
            raise ValueError(f"unknown malignancy class {c!r}; expected one of {tuple(MALIGNANCY_TEXT)}")
        words.append(MALIGNANCY_TEXT[c])
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def format_options(options: Sequence[str]) -> str:
    """One `LETTER: text` line per option."""
    if not 1 <= len(options) <= MAX_OPTIONS:
        raise ValueError(f"a question needs 1..{MAX_OPTIONS} options, got {len(options)}")
    return "\n".join(f"{LETTERS[i]}: {text}" for i, text in enumerate(options))


def mcq_instructions(*, think_tag: str = "thinking", final_tag: str = "final diagnosis",
                     malignancy_classes: Sequence[str] = PAPER_MALIGNANCY_CLASSES) -> str:
    """Answer-format instructions for an option question."""
    return (
        f"Answer in exactly this form: <{think_tag}>...</{think_tag}><{final_tag}>...</{final_tag}>.\n"
        f"Inside <{think_tag}>, describe the visible clinical features of the lesion (morphology, "
        f"colour, surface, border, arrangement) and reason from them to a diagnosis.\n"
        f"Inside <{final_tag}>, first write only the letter of the single most likely option, "
        f"with no reasoning. If several options are plausible, choose the most specific "
        f"(most fine-grained) one among them. Then state whether the lesion is "
        f"{_class_list(malignancy_classes)}."
    )


def mcq_prompt(options: Sequence[str], *, question: str = MCQ_QUESTION, think_tag: str = "thinking",
               final_tag: str = "final diagnosis",
               malignancy_classes: Sequence[str] = PAPER_MALIGNANCY_CLASSES) -> str:
    """The full user text of an option question: question, lettered options, instructions."""
    return (f"{question}\n{format_options(options)}\n"
            + mcq_instructions(think_tag=think_tag, final_tag=final_tag,
                               malignancy_classes=malignancy_classes))


def open_prompt(*, question: str = OPEN_QUESTION, think_tag: str = "thinking",
                final_tag: str = "final diagnosis",
                malignancy_classes: Sequence[str] = PAPER_MALIGNANCY_CLASSES) -> str:
    """The open-ended question: no options, the answer is a disease name."""
    return (
        f"{question}\n"
        f"Answer in exactly this form: <{think_tag}>...</{think_tag}><{final_tag}>...</{final_tag}>.\n"
        f"Inside <{think_tag}>, describe the visible clinical features of the lesion (morphology, "
        f"colour, surface, border, arrangement), name the differential diagnoses you consider and "
        f"compare them with what you see.\n"
        f"Inside <{final_tag}>, first write the name of the single most likely disease, as "
        f"specific as the image allows, with no reasoning. Then state whether the lesion is "
        f"{_class_list(malignancy_classes)}."
    )
