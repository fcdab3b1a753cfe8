"""Grow the knowledge base from a user's own textbook text with the optional LLM backend.

Input: a CSV or JSONL of captions/passages (`text`, optional `id` and `kind`). Captions give
one diagnostic rule + diagnosis each (or NOT A RULE); differential-diagnosis passages give
`subject: alternative (separating feature); ...` lists. Every name is normalised onto the
taxonomy and every addition validated before it is merged; what fails is reported with the
passage id and the reason, never merged.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skinr1_jax.knowledge.concepts import CONCEPTS
from skinr1_jax.knowledge.vocab import FEATURE_FIELDS
from skinr1_jax.taxonomy.resolve import UNKNOWN

if TYPE_CHECKING:
    from skinr1_jax.knowledge.kb import KnowledgeBase
    from skinr1_jax.llm.client import ChatClient
    from skinr1_jax.taxonomy import Taxonomy

KINDS = ("caption", "ddx")
TEXT_KEYS = ("text", "caption", "passage")
MAX_RULE_WORDS = 60

RULE_SYSTEM = (
    "You read figure captions and passages from a dermatology textbook. If the text describes "
    "what a skin condition looks like, turn it into one concise, declarative diagnostic rule "
    "that uses only the visible signs the text states (no history, histology, tests or "
    "anything not in the text), ending with the diagnosis, e.g. 'A rough, waxy, stuck-on "
    "brown papule indicates seborrheic keratosis.' Answer exactly "
    "<rule>...</rule><diagnosis>disease name</diagnosis>. If the text gives no such visual "
    "description, answer NOT A RULE.")
DDX_SYSTEM = (
    "You read differential-diagnosis passages from a dermatology textbook. For each condition "
    "whose differential diagnosis the passage gives, write one line "
    "<ddx>Condition: Alternative one (visible feature that separates it); Alternative two "
    "(visible feature)</ddx>. Use full singular disease names, visible clinical signs only "
    "(no histology) and only what the passage states. If there is none, answer NONE.")


class ExtractionError(ValueError):
    """A passages file is malformed; the message names the file and the line or row."""


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    kind: str          # caption | ddx


@dataclass
class Extraction:
    entries: list[dict[str, Any]]                     # partial KB entries (canonical names)
    rejected: list[tuple[str, str]] = field(default_factory=list)   # (passage id, reason)
    stats: dict[str, int] = field(default_factory=dict)


# ---- reading --------------------------------------------------------------------------------
def _passage(row: dict[str, Any], where: str, index: int) -> Passage:
    key = next((k for k in TEXT_KEYS if isinstance(row.get(k), str) and row[k].strip()), None)
    if key is None:
        raise ExtractionError(f"{where}: no non-empty {'/'.join(TEXT_KEYS)} field")
    text = row[key].strip()
    kind = str(row.get("kind") or "").strip().lower()
    if not kind:
        # The paper's heuristic: passages about the differential diagnosis carry the phrase.
        kind = "ddx" if "differential diagnos" in text.lower() else "caption"
    if kind not in KINDS:
        raise ExtractionError(f"{where}: kind {kind!r}; expected one of {KINDS}")
    return Passage(str(row.get("id") or index), text, kind)


def read_passages(path: str | Path) -> list[Passage]:
    """Passages from a `.csv` (header row) or `.jsonl` file; errors name the file and row/line."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExtractionError(f"{path}: passages file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExtractionError(f"{path}: unreadable passages file ({e})") from None
    out: list[Passage] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(raw.splitlines())
        if not reader.fieldnames or not set(TEXT_KEYS) & set(reader.fieldnames):
            raise ExtractionError(f"{path}: CSV header needs one of the columns {TEXT_KEYS}")
        for k, row in enumerate(reader):
            out.append(_passage(row, f"{path} row {k + 2}", k))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        for k, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ExtractionError(f"{path} line {k + 1}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ExtractionError(f"{path} line {k + 1}: expected a JSON object")
            out.append(_passage(row, f"{path} line {k + 1}", k))
    else:
        raise ExtractionError(f"{path}: expected a .csv or .jsonl file")
    if not out:
        raise ExtractionError(f"{path}: no passages")
    return out


# ---- parsing the model's answers --------------------------------------------------------------
def parse_rule_answer(answer: str) -> tuple[str, str] | None:
    """(rule, diagnosis) from `<rule>..</rule><diagnosis>..</diagnosis>`; None for NOT A RULE."""
    if "not a rule" in answer.lower():
        return None
    rule = re.search(r"<rule>(.*?)</rule>", answer, re.DOTALL | re.IGNORECASE)
    dx = re.search(r"<diagnosis>(.*?)</diagnosis>", answer, re.DOTALL | re.IGNORECASE)
    if rule is None or dx is None:
        raise ValueError("answer lacks <rule>...</rule><diagnosis>...</diagnosis>")
    return " ".join(rule.group(1).split()), " ".join(dx.group(1).split()).rstrip(".")


def parse_ddx_answer(answer: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(subject, [(alternative, separating feature or ''), ...]), ...] from <ddx> lines."""
    out = []
    for block in re.findall(r"<ddx>(.*?)</ddx>", answer, re.DOTALL | re.IGNORECASE):
        if ":" not in block:
            raise ValueError(f"<ddx> line {block[:60]!r} lacks 'Condition: alternatives'")
        subject, rest = block.split(":", 1)
        alternatives = []
        for item in re.split(r";|\n", rest):
            item = item.strip().rstrip(".")
            if not item:
                continue
            m = re.fullmatch(r"(.*?)\s*\((.*)\)", item, re.DOTALL)
            name, feature = (m.group(1), m.group(2)) if m else (item, "")
            alternatives.append((" ".join(name.split()), " ".join(feature.split())))
        out.append((" ".join(subject.split()), alternatives))
    if not out and "none" not in answer.lower():
        raise ValueError("answer has neither <ddx> lines nor NONE")
    return out


# ---- validation -----------------------------------------------------------------------------
_VISIBLE = frozenset(w for words in FEATURE_FIELDS.values() for w in words) | frozenset(CONCEPTS)


def _names_visible_sign(rule: str) -> bool:
    text = " " + re.sub(r"[^a-z\- ]+", " ", rule.lower()) + " "
    return any(re.search(rf"\b{re.escape(w)}(e?s)?\b", text) for w in _VISIBLE)


def _node(name: str, taxonomy: Taxonomy) -> int:
    try:
        return taxonomy.id(name.strip().lower())
    except KeyError:
        return taxonomy.resolve(name)


def check_rule(rule: str, diagnosis: str, taxonomy: Taxonomy) -> tuple[int, str | None]:
    """(node, None) when the rule may be merged, else (UNKNOWN or node, reason)."""
    node = _node(diagnosis, taxonomy)
    if node == UNKNOWN:
        return UNKNOWN, f"diagnosis {diagnosis!r} does not resolve to a taxonomy node"
    if not rule or any(c in rule for c in "<>"):
        return node, "empty rule or rule with markup"
    if len(rule.split()) > MAX_RULE_WORDS:
        return node, f"rule longer than {MAX_RULE_WORDS} words"
    if not _names_visible_sign(rule):
        return node, "rule names no visible finding of knowledge.vocab"
    return node, None


# ---- extraction -----------------------------------------------------------------------------
def extract_knowledge(passages: Sequence[Passage], client: ChatClient, taxonomy: Taxonomy, *,
                      temperature: float = 0.0, max_tokens: int = 256) -> Extraction:
    """Ask the model about every passage and keep the additions that validate."""
    from skinr1_jax.llm.client import LLMError

    rules: dict[int, list[str]] = {}
    diffs: dict[int, list[list[str]]] = {}
    rejected: list[tuple[str, str]] = []
    stats: Counter = Counter()
    for p in passages:
        system = RULE_SYSTEM if p.kind == "caption" else DDX_SYSTEM
        try:
            answer = client.ask(system, p.text, temperature=temperature, max_tokens=max_tokens)
        except LLMError as e:
            rejected.append((p.id, f"llm: {e}"))
            stats["llm_error"] += 1
            continue
        try:
            if p.kind == "caption":
                _take_rule(p, answer, taxonomy, rules, rejected, stats)
            else:
                _take_ddx(p, answer, taxonomy, diffs, rejected, stats)
        except ValueError as e:
            rejected.append((p.id, f"unparseable answer: {e}"))
            stats["unparseable"] += 1
    entries = []
    for node in sorted(set(rules) | set(diffs)):
        entry: dict[str, Any] = {"name": taxonomy.name(node)}
        if node in rules:
            entry["rules"] = rules[node]
        if node in diffs:
            entry["differentials"] = diffs[node]
        entries.append(entry)
    return Extraction(entries, rejected, dict(stats))


def _take_rule(p: Passage, answer: str, taxonomy: Taxonomy, rules: dict[int, list[str]],
               rejected: list[tuple[str, str]], stats: Counter) -> None:
    parsed = parse_rule_answer(answer)
    if parsed is None:
        stats["not_a_rule"] += 1
        return
    rule, diagnosis = parsed
    node, reason = check_rule(rule, diagnosis, taxonomy)
    if reason:
        rejected.append((p.id, reason))
        stats["rule_rejected"] += 1
        return
    rule = rule if rule.endswith(".") else rule + "."
    if rule not in rules.setdefault(node, []):
        rules[node].append(rule)
        stats["rules"] += 1


def _take_ddx(p: Passage, answer: str, taxonomy: Taxonomy, diffs: dict[int, list[list[str]]],
              rejected: list[tuple[str, str]], stats: Counter) -> None:
    for subject, alternatives in parse_ddx_answer(answer):
        node = _node(subject, taxonomy)
        if node == UNKNOWN:
            rejected.append((p.id, f"DDx subject {subject!r} does not resolve to a taxonomy node"))
            stats["differential_rejected"] += len(alternatives)
            continue
        have = diffs.setdefault(node, [])
        for name, feature in alternatives:
            other = _node(name, taxonomy)
            reason = (f"differential {name!r} does not resolve to a taxonomy node" if other == UNKNOWN
                      else f"differential {name!r} is {subject!r} itself" if other == node
                      else f"differential {name!r} of {subject!r} has no separating feature" if not feature
                      else None)
            if reason:
                rejected.append((p.id, reason))
                stats["differential_rejected"] += 1
            elif all(d[0] != taxonomy.name(other) for d in have):
                have.append([taxonomy.name(other), feature])
                stats["differentials"] += 1
        if not have:
            del diffs[node]


# ---- merging --------------------------------------------------------------------------------
def merge_extraction(kb: KnowledgeBase, extraction: Extraction,
                     source: str = "<user textbook>") -> KnowledgeBase:
    """`kb` with the extraction merged (validated by KnowledgeBase.merge).

    Differentials for a disease that has no profile and got no rule cannot stand alone (a
    disease needs a rule), so they are moved to `extraction.rejected`.
    """
    entries = []
    for entry in extraction.entries:
        node = kb.taxonomy.id(entry["name"])
        if node not in kb and "rules" not in entry and kb.taxonomy.depth(node) >= 3:
            extraction.rejected.append((entry["name"], "differentials for a disease without any rule"))
            continue
        entries.append(entry)
    return kb.merge(entries, source=source)


def grow_kb_file(passages_path: str | Path, out_path: str | Path, client: ChatClient,
                 kb: KnowledgeBase | None = None, *, temperature: float = 0.0,
                 max_tokens: int = 256) -> Extraction:
    """Read passages, extract, merge into `kb` (default: the shipped KB) and write the KB JSON.

    Diseases added from a caption alone have a rule but no morphology, so load the result with
    `KnowledgeBase.from_file(out_path, taxonomy, complete=False)`.
    """
    if kb is None:
        from skinr1_jax.knowledge.kb import load_default_kb
        kb = load_default_kb()
    extraction = extract_knowledge(read_passages(passages_path), client, kb.taxonomy,
                                   temperature=temperature, max_tokens=max_tokens)
    merged = merge_extraction(kb, extraction, source=str(passages_path))
    merged.to_file(out_path)
    return extraction

