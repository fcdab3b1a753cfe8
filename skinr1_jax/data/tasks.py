"""The paper's task formats: the hierarchical 4-option question (RL and `indomain`), the
`b_or_m`, `hierarchical` and `ddx` evaluation sets, and the open-ended question.

Every question is deterministic per (seed, example id, task kind): its generator comes from a
stable hash of the three, so a question does not depend on iteration order or on the process.
Scores are on the paper's option scale: the correct option scores 0.75, a shallower correct
ancestor in the 4-option question scores proportionally less, anything else 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from skinr1_jax.data import prompts
from skinr1_jax.knowledge.vocab import MALIGNANCY_CLASSES
from skinr1_jax.taxonomy import UNKNOWN, Taxonomy

CORRECT_SCORE = 0.75
EVAL_KINDS = ("indomain", "b_or_m", "hierarchical", "ddx", "open")


class _DDxGraph(Protocol):
    def neighbors(self, node_id: int) -> list[int]: ...


@dataclass(frozen=True, eq=False)
class Question:
    """One prompt with its options and per-option scores (empty for the open-ended form)."""

    prompt: str
    options: tuple[str, ...]
    option_nodes: tuple[int, ...]      # taxonomy ids; UNKNOWN for non-node options (b_or_m)
    scores: np.ndarray                 # float32[len(options)]
    answer: int                        # index of the correct option; -1 when open-ended
    malignancy: str
    node: int                          # the example's true node
    example_id: str
    kind: str                          # mcq | indomain | b_or_m | hierarchical | ddx | open


@dataclass(frozen=True)
class EvalSet:
    kind: str
    questions: tuple[Question, ...]
    skipped: int = 0                   # examples that could not form a question of this kind
    skip_reason: str = ""


@dataclass(frozen=True)
class TaskFormat:
    """Prompt wording knobs shared by every question builder."""

    think_tag: str = "thinking"
    final_tag: str = "final diagnosis"
    malignancy_classes: tuple[str, ...] = prompts.PAPER_MALIGNANCY_CLASSES


def example_rng(seed: int, example_id: str, salt: str = "") -> np.random.Generator:
    """A generator that depends only on (seed, salt, example id), stable across processes."""
    digest = hashlib.blake2b(f"{int(seed)}\x1f{salt}\x1f{example_id}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def options_are_nodes(question: Question) -> bool:
    """Whether a question's options are taxonomy nodes, which the option check places on the
    diagnosis's path (the benign/malignant options are malignancy classes; open-ended
    questions have none)."""
    return bool(question.option_nodes) and UNKNOWN not in question.option_nodes


def draw_seed(seed: int, draw: int) -> int:
    """The seed of an example's `draw`-th question draw (its own options and letters); draw 0
    is `seed` itself, so a single draw is the plain question."""
    return int(seed) + 1_000_003 * int(draw)


def malignancy_classes_of(examples: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The paper's three classes, plus non-neoplastic when the examples contain such labels."""
    present = {ex["malignancy"] for ex in examples}
    bad = present - set(MALIGNANCY_CLASSES)
    if bad:
        raise ValueError(f"examples have unknown malignancy classes {sorted(bad)}; "
                         f"expected {MALIGNANCY_CLASSES}")
    extra = tuple(c for c in MALIGNANCY_CLASSES
                  if c in present and c not in prompts.PAPER_MALIGNANCY_CLASSES)
    return prompts.PAPER_MALIGNANCY_CLASSES + extra


def path_pool(examples: Iterable[Mapping[str, Any]]) -> tuple[int, ...]:
    """Every node on any example's path (sorted): the distractor pool of one dataset."""
    return tuple(sorted({int(n) for ex in examples for n in ex["path"]}))


def _checked_path(example: Mapping[str, Any], taxonomy: Taxonomy) -> list[int]:
    ex_id = example.get("id", "<no id>")
    path = [int(n) for n in example["path"]]
    if not path:
        raise ValueError(f"example {ex_id!r} has an empty taxonomy path")
    if path[-1] != int(example["node"]):
        raise ValueError(f"example {ex_id!r}: path {path} does not end at its node {example['node']}")
    for n in path:
        if not 0 <= n < len(taxonomy):
            raise ValueError(f"example {ex_id!r}: path node {n} is not in the taxonomy ({len(taxonomy)} nodes)")
    return path


def _check_malignancy(example: Mapping[str, Any], fmt: TaskFormat) -> str:
    m = example["malignancy"]
    if m not in fmt.malignancy_classes:
        raise ValueError(f"example {example.get('id')!r} has malignancy {m!r}, which the prompt does not "
                         f"offer ({fmt.malignancy_classes}); pass TaskFormat(malignancy_classes=...)")
    return m


def _option_question(example: Mapping[str, Any], taxonomy: Taxonomy, nodes: Sequence[int],
                     scores: Sequence[float], answer_node: int, rng: np.random.Generator,
                     kind: str, fmt: TaskFormat) -> Question:
    order = rng.permutation(len(nodes))
    option_nodes = tuple(int(nodes[j]) for j in order)
    names = tuple(taxonomy.name(n) for n in option_nodes)
    return Question(
        prompt=prompts.mcq_prompt(names, think_tag=fmt.think_tag, final_tag=fmt.final_tag,
                                  malignancy_classes=fmt.malignancy_classes),
        options=names,
        option_nodes=option_nodes,
        scores=np.asarray([scores[j] for j in order], np.float32),
        answer=option_nodes.index(answer_node),
        malignancy=_check_malignancy(example, fmt),
        node=int(example["node"]),
        example_id=str(example["id"]),
        kind=kind,
    )


def make_mcq(example: Mapping[str, Any], path_pool: Sequence[int], rng: np.random.Generator,
             taxonomy: Taxonomy, *, n_options: int = 4, fmt: TaskFormat = TaskFormat()) -> Question:
    """The paper's hierarchical multiple-choice question for one example.

    k ~ uniform{1..min(3, L)} options are path nodes at sampled indices I; option i scores
    (i + 1) / (max(I) + 1) * 0.75, so the deepest sampled node is the answer (0.75). The other
    n_options - k are distinct distractors from `path_pool` minus this example's path (score 0).
    """
    path = _checked_path(example, taxonomy)
    k = int(rng.integers(1, min(3, len(path)) + 1))
    idx = np.sort(rng.choice(len(path), size=k, replace=False))
    top = int(idx[-1])
    on_path = set(path)
    candidates = sorted({int(n) for n in path_pool} - on_path)
    if len(candidates) < n_options - k:
        raise ValueError(f"example {example.get('id')!r}: only {len(candidates)} distractor nodes off its "
                         f"path, need {n_options - k}; the dataset's taxonomy paths are too few")
    distractors = rng.choice(len(candidates), size=n_options - k, replace=False)
    nodes = [path[i] for i in idx] + [candidates[j] for j in distractors]
    scores = [(int(i) + 1) / (top + 1) * CORRECT_SCORE for i in idx] + [0.0] * (n_options - k)
    return _option_question(example, taxonomy, nodes, scores, path[top], rng, "mcq", fmt)


def _by_dataset(examples: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for ex in examples:
        groups.setdefault(str(ex.get("dataset", "")), []).append(ex)
    return groups


def mcq_questions(examples: Sequence[Mapping[str, Any]], taxonomy: Taxonomy, *, seed: int,
                  pool_examples: Sequence[Mapping[str, Any]] | None = None, kind: str = "mcq",
                  fmt: TaskFormat | None = None) -> list[Question]:
    """make_mcq for each example; distractors come from its own dataset's paths in `pool_examples`
    (default: `examples`), as the paper draws them per source dataset."""
    fmt = fmt or TaskFormat(malignancy_classes=malignancy_classes_of(examples))
    pools = {name: path_pool(group) for name, group in _by_dataset(pool_examples or examples).items()}
    out = []
    for ex in examples:
        pool = pools.get(str(ex.get("dataset", "")))
        if pool is None:
            raise ValueError(f"example {ex.get('id')!r}: no pool examples from dataset {ex.get('dataset')!r}")
        q = make_mcq(ex, pool, example_rng(seed, str(ex["id"]), kind), taxonomy, fmt=fmt)
        out.append(replace(q, kind=kind))
    return out


def indomain_set(examples: Sequence[Mapping[str, Any]], taxonomy: Taxonomy, *, seed: int,
                 fmt: TaskFormat | None = None) -> EvalSet:
    """The 4-option question on a split; correct = the 0.75 option."""
    return EvalSet("indomain", tuple(mcq_questions(examples, taxonomy, seed=seed, kind="indomain", fmt=fmt)))


def b_or_m_set(examples: Sequence[Mapping[str, Any]], *, fmt: TaskFormat | None = None) -> EvalSet:
    """Options: benign / malignant / precancerous in situ (+ non-neoplastic when present), fixed order."""
    fmt = fmt or TaskFormat(malignancy_classes=malignancy_classes_of(examples))
    classes = fmt.malignancy_classes
    names = tuple(prompts.MALIGNANCY_TEXT[c] for c in classes)
    text = prompts.mcq_prompt(names, question=prompts.B_OR_M_QUESTION, think_tag=fmt.think_tag,
                              final_tag=fmt.final_tag, malignancy_classes=classes)
    questions = []
    for ex in examples:
        answer = classes.index(_check_malignancy(ex, fmt))
        scores = np.zeros(len(classes), np.float32)
        scores[answer] = CORRECT_SCORE
        questions.append(Question(text, names, (UNKNOWN,) * len(classes), scores, answer,
                                  ex["malignancy"], int(ex["node"]), str(ex["id"]), "b_or_m"))
    return EvalSet("b_or_m", tuple(questions))


def hierarchical_set(examples: Sequence[Mapping[str, Any]], taxonomy: Taxonomy, *, seed: int,
                     fmt: TaskFormat | None = None) -> EvalSet:
    """All path nodes as options (the finest 26 when longer); answer = the most specific.

    Paths of length 1 give a one-option question and are skipped (counted).
    """
    fmt = fmt or TaskFormat(malignancy_classes=malignancy_classes_of(examples))
    questions, skipped = [], 0
    for ex in examples:
        path = _checked_path(ex, taxonomy)[-prompts.MAX_OPTIONS:]
        if len(path) < 2:
            skipped += 1
            continue
        scores = [(i + 1) / len(path) * CORRECT_SCORE for i in range(len(path))]
        rng = example_rng(seed, str(ex["id"]), "hierarchical")
        questions.append(_option_question(ex, taxonomy, path, scores, path[-1], rng, "hierarchical", fmt))
    return EvalSet("hierarchical", tuple(questions), skipped, "path of length 1" if skipped else "")


def ddx_set(examples: Sequence[Mapping[str, Any]], taxonomy: Taxonomy, ddx_graph: _DDxGraph, *, seed: int,
            fmt: TaskFormat | None = None) -> EvalSet:
    """The true diagnosis among its DDx-graph neighbours that are labels in this split.

    At most 26 options (25 neighbours sampled when more); examples whose node has no such
    neighbour are skipped (counted).
    """
    fmt = fmt or TaskFormat(malignancy_classes=malignancy_classes_of(examples))
    split_nodes = {int(ex["node"]) for ex in examples}
    questions, skipped = [], 0
    for ex in examples:
        node = int(ex["node"])
        _checked_path(ex, taxonomy)
        neighbours = sorted({int(n) for n in ddx_graph.neighbors(node)} & split_nodes - {node})
        if not neighbours:
            skipped += 1
            continue
        rng = example_rng(seed, str(ex["id"]), "ddx")
        if len(neighbours) > prompts.MAX_OPTIONS - 1:
            pick = np.sort(rng.choice(len(neighbours), prompts.MAX_OPTIONS - 1, replace=False))
            neighbours = [neighbours[j] for j in pick]
        nodes = [node, *neighbours]
        scores = [CORRECT_SCORE] + [0.0] * len(neighbours)
        questions.append(_option_question(ex, taxonomy, nodes, scores, node, rng, "ddx", fmt))
    return EvalSet("ddx", tuple(questions), skipped, "no DDx neighbour in the split" if skipped else "")


def open_question(example: Mapping[str, Any], *, fmt: TaskFormat = TaskFormat()) -> Question:
    """No options: the model names a disease, resolved later through `Taxonomy.resolve`."""
    return Question(
        prompt=prompts.open_prompt(think_tag=fmt.think_tag, final_tag=fmt.final_tag,
                                   malignancy_classes=fmt.malignancy_classes),
        options=(), option_nodes=(), scores=np.zeros(0, np.float32), answer=-1,
        malignancy=_check_malignancy(example, fmt), node=int(example["node"]),
        example_id=str(example["id"]), kind="open")


def open_set(examples: Sequence[Mapping[str, Any]], taxonomy: Taxonomy, *,
             fmt: TaskFormat | None = None) -> EvalSet:
    fmt = fmt or TaskFormat(malignancy_classes=malignancy_classes_of(examples))
    for ex in examples:
        _checked_path(ex, taxonomy)
    return EvalSet("open", tuple(open_question(ex, fmt=fmt) for ex in examples))


def build_eval_set(kind: str, examples: Sequence[Mapping[str, Any]], taxonomy: Taxonomy, *, seed: int,
                   ddx_graph: _DDxGraph | None = None, think_tag: str = "thinking",
                   final_tag: str = "final diagnosis") -> EvalSet:
    """One of EVAL_KINDS built from a split's examples (`ddx` needs the KB's DDx graph)."""
    fmt = TaskFormat(think_tag=think_tag, final_tag=final_tag,
                     malignancy_classes=malignancy_classes_of(examples))
    if kind == "indomain":
        return indomain_set(examples, taxonomy, seed=seed, fmt=fmt)
    if kind == "b_or_m":
        return b_or_m_set(examples, fmt=fmt)
    if kind == "hierarchical":
        return hierarchical_set(examples, taxonomy, seed=seed, fmt=fmt)
    if kind == "ddx":
        if ddx_graph is None:
            raise ValueError("the ddx evaluation set needs ddx_graph (KnowledgeBase.ddx_graph())")
        return ddx_set(examples, taxonomy, ddx_graph, seed=seed, fmt=fmt)
    if kind == "open":
        return open_set(examples, taxonomy, fmt=fmt)
    raise ValueError(f"unknown evaluation set {kind!r}; expected one of {EVAL_KINDS}")
