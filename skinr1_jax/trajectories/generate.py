"""Textbook reasoning trajectories (the paper's five types plus a hierarchy walk).

Each trajectory starts from what the image shows (its observed concepts, when annotated),
reasons with the knowledge base's rules, and ends with the label and its place in the
taxonomy. Every one passes `verify` before it is returned; the rest are counted by reason.
Randomness is drawn per (seed, type, diagnosis), so adding a type or a diagnosis does not
change the others' trajectories.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from skinr1_jax.knowledge.concepts import CONCEPTS
from skinr1_jax.trajectories import templates as T
from skinr1_jax.trajectories.prompts import ALL_TYPES, sft_prompt
from skinr1_jax.trajectories.rephrase import llm_comparison
from skinr1_jax.trajectories.verify import verify

if TYPE_CHECKING:
    from skinr1_jax.knowledge import DDxGraph, KnowledgeBase
    from skinr1_jax.llm.client import ChatClient
    from skinr1_jax.taxonomy import Taxonomy


@dataclass
class GenerationResult:
    trajectories: list[dict[str, Any]]
    rejected: dict[str, int]                 # verifier problem code -> count (never returned)
    counts: dict[str, int]                   # type -> trajectories returned
    skipped: dict[str, int] = field(default_factory=dict)   # reason -> planned but not buildable
    llm: dict[str, int] = field(default_factory=dict)       # {"used", "fallback"} when enabled


class _Skip(Exception):
    """This (type, example) cannot be built from the KB; the message is the reason."""


@dataclass(frozen=True)
class _Context:
    taxonomy: Taxonomy
    kb: KnowledgeBase
    ddx: DDxGraph
    cfg: Any
    pool: tuple[int, ...]          # diseases with rules: candidates for random comparisons
    client: ChatClient | None


def generate_trajectories(examples: Iterable[Mapping[str, Any]], taxonomy: Taxonomy,
                          kb: KnowledgeBase, cfg: Any, seed: int, *, ddx: DDxGraph | None = None,
                          client: ChatClient | None = None) -> GenerationResult:
    """Trajectories for `examples` (dicts with `id`, `node`, `concepts`).

    `cfg` is the `generate` ConfigDict: `types`, `per_diagnosis_per_type` (trajectories per
    diagnosis and type, cycling over that diagnosis's examples), `max_per_type` (cap, filled
    round-robin over diagnoses so it stays balanced), tag names and `llm`. `ddx` defaults to
    the KB's graph; `client` defaults to one built from `cfg.llm` when `cfg.llm.enabled`.
    """
    unknown = [t for t in cfg.types if t not in ALL_TYPES]
    if unknown:
        raise ValueError(f"generate.types: unknown type(s) {unknown}; expected some of {ALL_TYPES}")
    if cfg.per_diagnosis_per_type < 1 or cfg.max_per_type < 1:
        raise ValueError("generate.per_diagnosis_per_type and generate.max_per_type must be >= 1")
    by_node = _group_examples(examples, taxonomy)
    if client is None and cfg.llm.enabled:
        from skinr1_jax.llm.client import client_from_config
        client = client_from_config(cfg.llm)
    pool = tuple(i for i in kb.node_ids if taxonomy.depth(i) >= 3 and kb.rules(i))
    ctx = _Context(taxonomy, kb, ddx if ddx is not None else kb.ddx_graph(), cfg, pool, client)
    out: list[dict[str, Any]] = []
    rejected: Counter = Counter()
    skipped: Counter = Counter()
    llm_stats: Counter = Counter()
    counts: dict[str, int] = {}
    for kind in cfg.types:
        plans = _round_robin([_plans(kind, node, exs, seed, cfg.per_diagnosis_per_type)
                              for node, exs in sorted(by_node.items())])
        made = 0
        for node, example, rng in plans:
            if made >= cfg.max_per_type:
                break
            try:
                traj = _build(kind, node, example, rng, ctx, llm_stats)
            except _Skip as e:
                skipped[f"{kind}: {e}"] += 1
                continue
            problems = verify(traj, taxonomy, ctx.ddx, cfg)
            if problems:
                rejected.update({p.split(":", 1)[0] for p in problems})
                continue
            out.append(traj)
            made += 1
        counts[kind] = made
    return GenerationResult(out, dict(rejected), counts, dict(skipped),
                            dict(llm_stats) if client is not None else {})


# ---- planning -----------------------------------------------------------------------------
def _group_examples(examples: Iterable[Mapping[str, Any]], taxonomy: Taxonomy) -> dict[int, list]:
    known = set(CONCEPTS)
    by_node: dict[int, list] = {}
    for ex in examples:
        for key in ("id", "node", "concepts"):
            if key not in ex:
                raise ValueError(f"example {ex.get('id', '?')!r} has no {key!r} field")
        node = ex["node"]
        if not isinstance(node, (int, np.integer)) or not 0 <= int(node) < len(taxonomy):
            raise ValueError(f"example {ex['id']!r}: node {node!r} is not a taxonomy node id")
        bad = [c for c in ex["concepts"] if c not in known]
        if bad:
            raise ValueError(f"example {ex['id']!r}: unknown concept(s) {bad}; expected knowledge.CONCEPTS names")
        by_node.setdefault(int(node), []).append(ex)
    for exs in by_node.values():
        exs.sort(key=lambda e: str(e["id"]))
    return by_node


def _plans(kind: str, node: int, examples: list, seed: int, per: int) -> list:
    rng = np.random.default_rng([seed, ALL_TYPES.index(kind), node])
    order = rng.permutation(len(examples))
    return [(node, examples[order[k % len(examples)]], rng) for k in range(per)]


def _round_robin(lists: Sequence[list]) -> list:
    return [x for k in range(max(map(len, lists), default=0)) for lst in lists if k < len(lst)
            for x in [lst[k]]]


# ---- building -----------------------------------------------------------------------------
# Word budgets of the thinking, so that chat template, image, prompt and response fit the
# default max_seq_len of 256 tokens (the embedded tokenizer spends ~1.35 tokens per word):
# comparison types (the two rules with the observations, then all) and the hierarchy walk.
DDX_RULE_WORDS = 50
DDX_MAX_WORDS = 80
WALK_MAX_WORDS = 80


def _words(*parts: str | Sequence[str]) -> int:
    return sum(len(p.split()) if isinstance(p, str) else _words(*p) for p in parts)


def _rule(ctx: _Context, node: int, rng: np.random.Generator) -> str:
    rules = ctx.kb.rules(node) if node in ctx.kb else ()
    if not rules:
        raise _Skip("no rule for the label")
    return T.sentence(rules[int(rng.integers(len(rules)))])


def _shortest_rule(ctx: _Context, node: int) -> str:
    return T.sentence(min(ctx.kb.rules(node), key=lambda r: len(r.split())))


def _related(ctx: _Context, a: int, b: int) -> bool:
    return a == b or ctx.taxonomy.is_ancestor(a, b) or ctx.taxonomy.is_ancestor(b, a)


def _other(kind: str, node: int, ctx: _Context, rng: np.random.Generator) -> int:
    neighbours = ctx.ddx.neighbors(node)
    if kind.startswith("ddx_"):
        options = [o for o in neighbours if o in ctx.kb and ctx.kb.rules(o) and not _related(ctx, o, node)]
        if not options:
            raise _Skip("no DDx neighbour with a rule")
    else:
        near = set(neighbours)
        options = [o for o in ctx.pool if o not in near and not _related(ctx, o, node)]
        if not options:
            raise _Skip("no non-neighbour diagnosis with a rule")
    return options[int(rng.integers(len(options)))]


def _ancestors(ctx: _Context, node: int) -> list[str]:
    return [ctx.taxonomy.name(i) for i in reversed(ctx.taxonomy.path(node)[:-1])]


def _few(items: Iterable[str], rng: np.random.Generator, k: int) -> list[str]:
    items = list(items)
    rng.shuffle(items)
    return items[:k]


def _build(kind: str, node: int, example: Mapping[str, Any], rng: np.random.Generator,
           ctx: _Context, llm_stats: Counter) -> dict[str, Any]:
    if node not in ctx.kb:
        raise _Skip("label has no knowledge-base profile")
    label = ctx.taxonomy.name(node)
    concepts = list(dict.fromkeys(example["concepts"]))
    opening = [T.pick(rng, T.OBSERVE, np=T.describe(concepts, rng))] if concepts else []
    if kind == "basic":
        thinking, differentials = opening + _basic(ctx, node, concepts, rng), []
    elif kind == "hierarchy_walk":
        if not concepts:
            raise _Skip("no observed concepts to walk from")
        steps, differentials = _walk(ctx, node, concepts, _words(opening), rng)
        thinking = opening + steps
    else:
        other = _other(kind, node, ctx, rng)
        thinking = opening + _compare(kind, ctx, node, other, concepts, _words(opening), rng,
                                      llm_stats)
        differentials = [ctx.taxonomy.name(other)]
    diagnosis = T.diagnosis_text(label, _ancestors(ctx, node), ctx.taxonomy.malignancy(node))
    cfg = ctx.cfg
    response = (f"<{cfg.think_tag}>{' '.join(thinking)}</{cfg.think_tag}>\n"
                f"<{cfg.diagnosis_tag}>{diagnosis}</{cfg.diagnosis_tag}>")
    return {"type": kind, "label": label, "node": node, "example_id": str(example["id"]),
            "prompt": sft_prompt(kind, cfg), "response": response, "differentials": differentials}


def _basic(ctx: _Context, node: int, concepts: list[str], rng: np.random.Generator) -> list[str]:
    label = ctx.taxonomy.name(node)
    steps = [T.pick(rng, T.RULE_INTRO, rule=_rule(ctx, node, rng))]
    support = [c for c in concepts if c in ctx.kb.profile(node).concepts]
    if support:
        steps.append(T.pick(rng, T.MATCH, findings=T.join_words(T.findings(_few(support, rng, 3)))))
    else:
        steps.append(T.pick(rng, T.MATCH_GENERIC))
    steps.append(T.pick(rng, T.CONCLUDE, dx=label))
    return steps


def _compare(kind: str, ctx: _Context, node: int, other: int, concepts: list[str],
             observed_words: int, rng: np.random.Generator, llm_stats: Counter) -> list[str]:
    """keep: the label is primary and stays; switch: `other` is the first hypothesis, the label wins."""
    name, other_name = ctx.taxonomy.name(node), ctx.taxonomy.name(other)
    rule, other_rule = _rule(ctx, node, rng), _rule(ctx, other, rng)
    if observed_words + _words(rule, other_rule) > DDX_RULE_WORDS:
        rule, other_rule = _shortest_rule(ctx, node), _shortest_rule(ctx, other)
    intro_bank = T.DDX_INTRO if kind.startswith("ddx_") else T.RANDOM_INTRO
    if kind.endswith("_keep"):
        steps = [T.pick(rng, T.RULE_INTRO, rule=rule), T.pick(rng, T.PRIMARY, dx=name),
                 T.pick(rng, intro_bank, dx=name, other=other_name, rule=other_rule)]
    else:
        steps = [T.pick(rng, T.HYPOTHESIS_INTRO, rule=other_rule),
                 T.pick(rng, T.HYPOTHESIS, dx=other_name),
                 T.pick(rng, intro_bank, dx=other_name, other=name, rule=rule)]
    ending_bank = T.KEEP if kind.endswith("_keep") else T.SWITCH
    ending = T.pick(rng, ending_bank, dx=name, other=other_name)
    used = observed_words + _words(steps, ending)
    # The comparison shrinks to fit the budget: two findings each way, one, then a bare verdict.
    comparison = _template_comparison(ctx, node, other, concepts, rng, 2)
    if used + _words(comparison) > DDX_MAX_WORDS:
        comparison = _template_comparison(ctx, node, other, concepts, rng, 1)
    if used + _words(comparison) > DDX_MAX_WORDS:
        comparison = T.pick(rng, T.VERDICT, dx=name, other=other_name)
        if used + _words(comparison) > DDX_MAX_WORDS:   # long names: the shortest ending
            ending = min((b.format(dx=name, other=other_name, Dx=T.cap(name)) for b in ending_bank),
                         key=lambda e: len(e.split()))
    if ctx.client is not None:
        text = llm_comparison(ctx.client, ctx.cfg.llm, ctx.taxonomy, node, rule, other,
                              other_rule, T.findings(concepts))
        llm_stats["used" if text else "fallback"] += 1
        comparison = text or comparison
    steps.append(comparison)
    feature = _separating_feature(ctx, node, other) if kind.startswith("ddx_") else None
    if feature:
        separator = T.pick(rng, T.SEPARATOR, feature=feature.rstrip("."))
        if used + _words(comparison, separator) <= DDX_MAX_WORDS:
            steps.append(separator)
    return steps + [ending]


def _template_comparison(ctx: _Context, node: int, other: int, concepts: list[str],
                         rng: np.random.Generator, k: int) -> str:
    name, other_name = ctx.taxonomy.name(node), ctx.taxonomy.name(other)
    mine, theirs = ctx.kb.profile(node).concepts, ctx.kb.profile(other).concepts
    if not concepts:
        a = _few([c for c in mine if c not in theirs], rng, k)
        b = _few([c for c in theirs if c not in mine], rng, k)
        if a and b:
            return T.pick(rng, T.TEXTBOOK_CONTRAST, dx=name, other=other_name,
                          a=T.join_words(T.findings(a)), b=T.join_words(T.findings(b)))
        return T.pick(rng, T.TEXTBOOK_CONTRAST_GENERIC, dx=name, other=other_name)
    support = _few([c for c in concepts if c in mine], rng, k)
    against = _few([c for c in theirs if c not in concepts], rng, k)
    first = T.pick(rng, T.SUPPORT, dx=name,
                   findings=T.join_words(T.findings(support)) if support else "overall appearance")
    if against:
        second = T.pick(rng, T.AGAINST, other=other_name, findings=T.join_words(T.findings(against)))
    else:
        second = T.pick(rng, T.AGAINST_NONE, other=other_name)
    return f"{first}, {second}"


def _separating_feature(ctx: _Context, node: int, other: int) -> str | None:
    for a, b in ((node, other), (other, node)):
        b_name = ctx.taxonomy.name(b)
        for name, feature in ctx.kb.profile(a).differentials:
            if name == b_name:
                return feature
    return ctx.ddx.feature(node, other)


def _walk(ctx: _Context, node: int, concepts: list[str], observed_words: int,
          rng: np.random.Generator) -> tuple[list[str], list[str]]:
    tax = ctx.taxonomy
    path = tax.path(node)
    if len(path) < 3:
        raise _Skip("label too shallow for a hierarchy walk")
    n_others = int(rng.integers(2, 5))
    seen = set(concepts)

    # A candidate whose profile reads exactly like the findings could not be argued against.
    def usable(o: int) -> bool:
        return o in ctx.kb and not _related(ctx, o, node) and set(ctx.kb.profile(o).concepts) != seen

    neighbours = [o for o in ctx.ddx.neighbors(node) if usable(o)]
    near = [o for o in ctx.pool if o not in neighbours and usable(o)
            and tax.depth(tax.lca(o, node)) >= 2]
    others = [int(o) for o in _few(neighbours, rng, n_others)]
    others += [int(o) for o in _few(near, rng, n_others - len(others))]
    if len(others) < 2:
        raise _Skip("fewer than two candidates besides the label")
    candidates = others + [node]
    rng.shuffle(candidates)
    items = {c: _walk_item(ctx, node, c, concepts, rng) for c in candidates}
    chain = ", then ".join(tax.name(i) for i in path[1:-1])
    head = T.pick(rng, T.WALK_GROUP, group=tax.name(path[0]), path=chain)
    lead = T.pick(rng, T.WALK_CANDIDATES)
    pick = T.pick(rng, T.WALK_PICK, dx=tax.name(node))
    # Over budget, the walk weighs fewer candidates (never fewer than three).
    while len(items) > 3 and observed_words + _words(head, lead, pick, list(items.values())) > WALK_MAX_WORDS:
        del items[next(c for c in reversed(candidates) if c in items and c != node)]
    steps = [head, lead + " " + "; ".join(items.values()) + ".", pick]
    return steps, [tax.name(o) for o in others if o in items]


def _walk_item(ctx: _Context, node: int, c: int, concepts: list[str], rng: np.random.Generator) -> str:
    theirs = ctx.kb.profile(c).concepts
    pro = _few([x for x in concepts if x in theirs], rng, 2)
    # The right diagnosis explains every finding; a wrong one leaves findings unexplained or
    # lacks its own hallmarks.
    unexplained = _few([x for x in concepts if x not in theirs], rng, 2)
    missing = [] if c == node else _few([x for x in theirs if x not in concepts], rng, 2)
    if unexplained:
        con = T.join_words(T.findings(unexplained)) + " unexplained"
    elif missing:
        con = "no " + T.join_words(T.findings(missing), "or")
    else:
        con = "nothing"
    return T.WALK_ITEM.format(dx=ctx.taxonomy.name(c), pro=T.join_words(T.findings(pro)) or "little", con=con)


# ---- reporting ----------------------------------------------------------------------------
def summarize(result: GenerationResult,
              tokenize: Callable[[str], Sequence[int]] | None = None) -> dict[str, Any]:
    """Counts per type, rejections, skips and response-length statistics.

    Lengths are whitespace words unless `tokenize` (text -> token ids) is given; `total`
    also counts the prompt (the image tokens are not included).
    """
    def length(text: str) -> int:
        return len(tokenize(text)) if tokenize is not None else len(text.split())

    def stats(values: list[int]) -> dict[str, float]:
        if not values:
            return {}
        q = np.percentile(values, [50, 90])
        return {"min": min(values), "mean": round(statistics.fmean(values), 1),
                "p50": float(q[0]), "p90": float(q[1]), "max": max(values)}

    by_type: dict[str, list[int]] = {}
    totals: list[int] = []
    for t in result.trajectories:
        by_type.setdefault(t["type"], []).append(length(t["response"]))
        totals.append(length(t["prompt"]) + by_type[t["type"]][-1])
    return {"counts": dict(result.counts), "total": len(result.trajectories),
            "rejected": dict(result.rejected), "skipped": dict(result.skipped),
            "llm": dict(result.llm), "unit": "tokens" if tokenize is not None else "words",
            "response_length": {k: stats(v) for k, v in by_type.items()},
            "prompt_plus_response_length": stats(totals)}


def format_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable lines for the `generate` stage's log."""
    unit = summary["unit"]
    lines = [f"trajectories: {summary['total']} written"]
    for kind, n in summary["counts"].items():
        s = summary["response_length"].get(kind, {})
        spread = (f" | response {unit}: min {s['min']} mean {s['mean']} p50 {s['p50']:g} "
                  f"p90 {s['p90']:g} max {s['max']}") if s else ""
        lines.append(f"  {kind:<15} {n:>6}{spread}")
    t = summary["prompt_plus_response_length"]
    if t:
        lines.append(f"  prompt+response {unit}: mean {t['mean']} p90 {t['p90']:g} max {t['max']}")
    lines.append("rejected: " + (", ".join(f"{k} {v}" for k, v in sorted(summary["rejected"].items())) or "none"))
    if summary["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k} ({v})" for k, v in sorted(summary["skipped"].items())))
    if summary["llm"]:
        lines.append("llm comparisons: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["llm"].items())))
    return "\n".join(lines)
