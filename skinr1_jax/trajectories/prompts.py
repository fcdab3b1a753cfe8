"""User-turn instructions for the SFT trajectories (our wording of the paper's two prompts).

The image is added by the data pipeline; these strings hold only the instruction text. They
are short on purpose: the default model sees at most `data.max_seq_len` tokens in total.
"""

from __future__ import annotations

from typing import Any

BASIC_TYPES = ("basic",)
DDX_TYPES = ("ddx_keep", "ddx_switch", "random_keep", "random_switch")
WALK_TYPES = ("hierarchy_walk",)
ALL_TYPES = BASIC_TYPES + DDX_TYPES + WALK_TYPES


_ANSWER = "In <{d}></{d}> give the most specific diagnosis, its taxonomy and its malignancy."


def basic_prompt(think_tag: str = "thinking", diagnosis_tag: str = "diagnosis") -> str:
    """Describe the visible findings, state the rule they satisfy, then the diagnosis."""
    return (f"Diagnose this skin lesion. In <{think_tag}></{think_tag}> describe what is visible "
            "and the diagnostic rule it meets. " + _ANSWER.format(d=diagnosis_tag))


def ddx_prompt(think_tag: str = "thinking", diagnosis_tag: str = "diagnosis") -> str:
    """Findings -> likely diagnosis -> an alternative with its own features -> compare -> conclude."""
    return (f"Diagnose this skin lesion with a differential. In <{think_tag}></{think_tag}> "
            "describe what is visible, propose a diagnosis, compare an alternative and "
            "conclude. " + _ANSWER.format(d=diagnosis_tag))


def walk_prompt(think_tag: str = "thinking", diagnosis_tag: str = "diagnosis") -> str:
    """Findings -> group -> subgroup -> candidates with findings for and against -> diagnosis."""
    return (f"Diagnose this skin lesion step by step. In <{think_tag}></{think_tag}> describe "
            "what is visible, narrow from group to subgroup, weigh three to five candidates "
            "by findings for and against, and pick one. "
            + _ANSWER.format(d=diagnosis_tag))


def sft_prompt(trajectory_type: str, cfg: Any) -> str:
    """The instruction for one trajectory type, with tag names from the `generate` config."""
    tags = (cfg.think_tag, cfg.diagnosis_tag)
    if trajectory_type in BASIC_TYPES:
        return basic_prompt(*tags)
    if trajectory_type in DDX_TYPES:
        return ddx_prompt(*tags)
    if trajectory_type in WALK_TYPES:
        return walk_prompt(*tags)
    raise ValueError(f"unknown trajectory type {trajectory_type!r}; expected one of {ALL_TYPES}")
