"""The trajectory verifier: a trajectory is written only when this finds no problem.

Each problem is "code: detail"; the generator counts rejections by code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from skinr1_jax.taxonomy.resolve import UNKNOWN
from skinr1_jax.trajectories.prompts import ALL_TYPES, DDX_TYPES, WALK_TYPES
from skinr1_jax.trajectories.templates import MALIGNANCY_WORDS

if TYPE_CHECKING:
    from skinr1_jax.knowledge import DDxGraph
    from skinr1_jax.taxonomy import Taxonomy

_HIERARCHY = re.compile(
    r"^(?P<dx>.+?)\.\s+(?P<dx2>.+?)\s+is\s+(?:a\s+subtype\s+of\s+(?P<anc>.+?)|a\s+top-level\s+category)"
    r",\s+and\s+is\s+generally\s+(?P<mal>.+?)\.$", re.DOTALL | re.IGNORECASE)


def node_of(text: str, taxonomy: Taxonomy) -> int:
    """Exact canonical name first (some canonical names normalise alike), then the resolver."""
    try:
        return taxonomy.id(text.strip().lower())
    except KeyError:
        return taxonomy.resolve(text)


def split_response(response: str, think_tag: str, diagnosis_tag: str) -> tuple[str, str] | None:
    """(thinking, diagnosis) when the response is exactly one think block then one diagnosis block."""
    t, d = re.escape(think_tag), re.escape(diagnosis_tag)
    m = re.fullmatch(rf"\s*<{t}>(.*?)</{t}>\s*<{d}>(.*?)</{d}>\s*", response, re.DOTALL)
    if m is None:
        return None
    thinking, diagnosis = m.group(1).strip(), m.group(2).strip()
    if not thinking or not diagnosis or any(ch in thinking + diagnosis for ch in "<>"):
        return None
    return thinking, diagnosis


def verify(trajectory: Mapping[str, Any], taxonomy: Taxonomy, ddx: DDxGraph | None,
           cfg: Any) -> list[str]:
    """Problems with one trajectory ([] = valid). `cfg` is the `generate` ConfigDict (tag names).

    Checks: known type; `label` is the name of `node`; tags well formed; the final diagnosis and
    the hierarchy sentence resolve to the label; the stated ancestors (fine -> coarse) and the
    malignancy are the label's; every differential in `differentials` resolves to another node
    and is named in the thinking; DDx types compare against a DDx-graph neighbour and random
    types against a non-neighbour (when `ddx` is given).
    """
    problems: list[str] = []
    kind = trajectory.get("type")
    if kind not in ALL_TYPES:
        problems.append(f"type: unknown trajectory type {kind!r}")
    node = trajectory.get("node")
    if not isinstance(node, int) or not 0 <= node < len(taxonomy):
        return problems + [f"label: node {node!r} is not a taxonomy node id"]
    label = taxonomy.name(node)
    if trajectory.get("label") != label:
        problems.append(f"label: label {trajectory.get('label')!r} is not the name of node {node} ({label!r})")
    parts = split_response(str(trajectory.get("response", "")), cfg.think_tag, cfg.diagnosis_tag)
    if parts is None:
        return problems + [f"tags: response is not <{cfg.think_tag}>...</{cfg.think_tag}> then "
                           f"<{cfg.diagnosis_tag}>...</{cfg.diagnosis_tag}> with plain text inside"]
    thinking, diagnosis = parts
    problems += _check_diagnosis(diagnosis, node, taxonomy)
    if label.lower() not in thinking.lower():
        problems.append(f"thinking: the reasoning never names the label {label!r}")
    problems += _check_differentials(trajectory, kind, thinking, node, taxonomy, ddx)
    return problems


def _check_diagnosis(diagnosis: str, node: int, taxonomy: Taxonomy) -> list[str]:
    m = _HIERARCHY.match(diagnosis)
    if m is None:
        return [f"hierarchy: diagnosis {diagnosis[:80]!r} lacks 'X. X is a subtype of ..., and is generally ...'"]
    problems = []
    label = taxonomy.name(node)
    for key in ("dx", "dx2"):
        got = node_of(m.group(key), taxonomy)
        if got != node:
            problems.append(f"diagnosis: {m.group(key)!r} does not resolve to the label {label!r}")
    want = [taxonomy.name(i) for i in reversed(taxonomy.path(node)[:-1])]
    stated = [a.strip() for a in m.group("anc").split(", within ")] if m.group("anc") else []
    if [node_of(a, taxonomy) for a in stated] != [taxonomy.id(a) for a in want]:
        problems.append(f"ancestors: stated {stated} but the label's ancestors (fine -> coarse) are {want}")
    words = MALIGNANCY_WORDS.get(taxonomy.malignancy(node) or "", None)
    if m.group("mal").strip().lower() != (words or "").lower():
        problems.append(f"malignancy: stated {m.group('mal')!r} but {label!r} is {words!r}")
    return problems


def _check_differentials(trajectory: Mapping[str, Any], kind: Any, thinking: str, node: int,
                         taxonomy: Taxonomy, ddx: DDxGraph | None) -> list[str]:
    names = trajectory.get("differentials", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return [f"differential: 'differentials' must be a list of names, got {names!r}"]
    problems = []
    ids = []
    for name in names:
        other = node_of(name, taxonomy)
        if other == UNKNOWN:
            problems.append(f"differential: {name!r} does not resolve to a taxonomy node")
            continue
        if other == node:
            problems.append(f"differential: {name!r} is the label itself")
        if name.lower() not in thinking.lower():
            problems.append(f"differential: {name!r} is listed but not named in the reasoning")
        ids.append(other)
    if kind in DDX_TYPES:
        if len(names) != 1:
            problems.append(f"differential: a {kind} trajectory compares exactly one alternative, got {names}")
        elif ids and ddx is not None:
            neighbour = ids[0] in ddx.neighbors(node)
            if kind.startswith("ddx_") and not neighbour:
                problems.append(f"ddx_edge: {names[0]!r} is not a DDx-graph neighbour of {taxonomy.name(node)!r}")
            if kind.startswith("random_") and neighbour:
                problems.append(f"ddx_edge: {names[0]!r} is a DDx-graph neighbour, not a random alternative")
    if kind in WALK_TYPES and not 2 <= len(names) <= 4:
        problems.append(f"differential: a hierarchy walk weighs 3-5 candidates, got {len(names) + 1}")
    return problems
