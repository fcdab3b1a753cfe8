"""The textbook knowledge base: per-node visible findings, differentials and diagnostic rules.

File format (JSON): `{"entries": [{"name", "morphology", "colors", "surface", "border",
"configuration", "size", "elevation", "sites", "distinguishing", "differentials", "rules"}]}`.
Feature fields hold words of `knowledge.vocab` only; `differentials` is a list of
`[other node name, separating feature]`; names resolve through the taxonomy (synonyms allowed).
Validation happens at load and names the node and field at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skinr1_jax.jsonfile import read_json
from skinr1_jax.knowledge.concepts import CONCEPTS, concept_of_feature
from skinr1_jax.knowledge.ddx import DDxGraph
from skinr1_jax.knowledge.vocab import FEATURE_FIELDS
from skinr1_jax.taxonomy.resolve import UNKNOWN

if TYPE_CHECKING:
    from skinr1_jax.taxonomy import Taxonomy

TEXT_FIELDS = ("distinguishing", "differentials", "rules")
ENTRY_FIELDS = ("name", *FEATURE_FIELDS, *TEXT_FIELDS)
MIN_DISEASE_DIFFERENTIALS = 2


class KnowledgeError(ValueError):
    """A knowledge-base file or entry is malformed."""


@dataclass(frozen=True)
class Profile:
    name: str
    morphology: tuple[str, ...]
    colors: tuple[str, ...]
    surface: tuple[str, ...]
    border: tuple[str, ...]
    configuration: tuple[str, ...]
    size: tuple[str, ...]
    elevation: tuple[str, ...]
    sites: tuple[str, ...]
    distinguishing: tuple[str, ...]
    differentials: tuple[tuple[str, str], ...]   # (canonical node name, separating feature)
    rules: tuple[str, ...]
    concepts: tuple[str, ...]                    # CONCEPTS expressed by the feature words

    def features(self) -> dict[str, tuple[str, ...]]:
        return {f: getattr(self, f) for f in FEATURE_FIELDS}


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise KnowledgeError(f"{where}: expected a list of non-empty strings")
    return value


def _parse_entry(raw: Any, taxonomy: Taxonomy, source: str, *, partial: bool,
                 strict: bool) -> tuple[int, dict[str, list]] | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise KnowledgeError(f"{source}: every entry needs a 'name' string (got {str(raw)[:80]!r})")
    name = raw["name"]
    node = taxonomy.resolve(name)
    if node == UNKNOWN:
        if strict:
            raise KnowledgeError(f"{source}: entry {name!r} does not resolve to a taxonomy node")
        return None
    where = f"{source}: node {taxonomy.name(node)!r}"
    unknown = set(raw) - set(ENTRY_FIELDS)
    if unknown:
        raise KnowledgeError(f"{where}: unknown field(s) {sorted(unknown)}")
    missing = [f for f in ENTRY_FIELDS if f not in raw]
    if missing and not partial:
        raise KnowledgeError(f"{where}: missing field(s) {missing}")
    fields: dict[str, list] = {}
    for field, vocab in FEATURE_FIELDS.items():
        if field in raw:
            words = _strings(raw[field], f"{where} field {field!r}")
            bad = [w for w in words if w not in vocab]
            if bad:
                raise KnowledgeError(f"{where} field {field!r}: {bad} not in knowledge.vocab")
            fields[field] = list(dict.fromkeys(words))
    for field in ("distinguishing", "rules"):
        if field in raw:
            fields[field] = _strings(raw[field], f"{where} field {field!r}")
    if "differentials" in raw:
        diffs = []
        for k, d in enumerate(raw["differentials"] if isinstance(raw["differentials"], list) else [None]):
            if not (isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) and x.strip() for x in d)):
                raise KnowledgeError(f"{where} field 'differentials' #{k}: expected [node name, separating feature]")
            other = taxonomy.resolve(d[0])
            if other == UNKNOWN:
                if strict:
                    raise KnowledgeError(f"{where} field 'differentials': {d[0]!r} does not resolve to a node")
                continue
            if other == node:
                raise KnowledgeError(f"{where} field 'differentials': {d[0]!r} names the node itself")
            diffs.append((taxonomy.name(other), d[1]))
        fields["differentials"] = diffs
    return node, fields


def _is_disease(taxonomy: Taxonomy, node: int) -> bool:
    return taxonomy.depth(node) >= 3


def _make_profile(taxonomy: Taxonomy, node: int, fields: Mapping[str, list], source: str,
                  complete: bool) -> Profile:
    where = f"{source}: node {taxonomy.name(node)!r}"
    if _is_disease(taxonomy, node):
        if not fields.get("rules"):
            raise KnowledgeError(f"{where} field 'rules': a disease needs at least one diagnostic rule")
    if _is_disease(taxonomy, node) and complete:
        if len(fields.get("differentials", [])) < MIN_DISEASE_DIFFERENTIALS:
            raise KnowledgeError(f"{where} field 'differentials': a disease needs at least "
                                 f"{MIN_DISEASE_DIFFERENTIALS} differentials")
        if not fields.get("morphology"):
            raise KnowledgeError(f"{where} field 'morphology': a disease needs a primary morphology")
    concepts = {concept_of_feature(f, w) for f in FEATURE_FIELDS for w in fields.get(f, ())}
    return Profile(
        name=taxonomy.name(node),
        **{f: tuple(fields.get(f, ())) for f in FEATURE_FIELDS},
        distinguishing=tuple(fields.get("distinguishing", ())),
        differentials=tuple(tuple(d) for d in fields.get("differentials", ())),
        rules=tuple(fields.get("rules", ())),
        concepts=tuple(c for c in CONCEPTS if c in concepts),
    )


class KnowledgeBase:
    """Validated textbook profiles keyed by taxonomy node id."""

    def __init__(self, taxonomy: Taxonomy, entries: Iterable[Any], source: str = "<entries>",
                 strict: bool = True, complete: bool = True):
        """`strict`: every name must resolve; `complete`: every disease needs a morphology and
        at least two differentials (merged user knowledge may bring a rule alone)."""
        self.taxonomy = taxonomy
        self.source = source
        parsed: dict[int, dict[str, list]] = {}
        for raw in entries:
            got = _parse_entry(raw, taxonomy, source, partial=False, strict=strict)
            if got is None:
                continue
            node, fields = got
            if node in parsed:
                raise KnowledgeError(f"{source}: node {taxonomy.name(node)!r} has more than one entry")
            parsed[node] = fields
        missing = [taxonomy.name(i) for i in taxonomy.core_ids() if i not in parsed]
        if missing:
            raise KnowledgeError(f"{source}: no entry for taxonomy node(s) {missing[:10]}"
                                 f"{' ...' if len(missing) > 10 else ''}")
        self._profiles = {n: _make_profile(taxonomy, n, f, source, complete) for n, f in parsed.items()}

    @classmethod
    def from_file(cls, path: str | Path, taxonomy: Taxonomy, strict: bool = True,
                  complete: bool = True) -> KnowledgeBase:
        """Load and validate; `strict=False` skips names outside `taxonomy` (e.g. a subset)."""
        path = Path(path)
        data = read_json(path, KnowledgeError, "knowledge-base file")
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise KnowledgeError(f"{path}: expected a JSON object with an 'entries' list")
        return cls(taxonomy, data["entries"], source=str(path), strict=strict, complete=complete)

    # ---- queries ---------------------------------------------------------------------------
    def __contains__(self, node_id: int) -> bool:
        return node_id in self._profiles

    def __len__(self) -> int:
        return len(self._profiles)

    @property
    def node_ids(self) -> list[int]:
        return sorted(self._profiles)

    def profile(self, node_id: int) -> Profile:
        try:
            return self._profiles[node_id]
        except KeyError:
            raise KeyError(f"no knowledge-base profile for node {node_id} "
                           f"({self.taxonomy.name(node_id) if 0 <= node_id < len(self.taxonomy) else 'out of range'})") from None

    def rules(self, node_id: int) -> tuple[str, ...]:
        return self.profile(node_id).rules

    def ddx_graph(self) -> DDxGraph:
        return DDxGraph(self.taxonomy, [(n, d, feat) for n, p in self._profiles.items() for d, feat in p.differentials])

    # ---- growth and export -----------------------------------------------------------------
    def merge(self, entries: Iterable[Any], source: str = "<merged>") -> KnowledgeBase:
        """A new KB with `entries` (partial entries allowed) validated and merged in.

        List fields are unioned with the existing ones in order; a node without a profile
        gets a new one (a disease still needs a rule; features may stay empty).
        """
        merged = {n: self._to_entry(p) for n, p in self._profiles.items()}
        for raw in entries:
            node, fields = _parse_entry(raw, self.taxonomy, source, partial=True, strict=True)
            entry = merged.setdefault(node, {"name": self.taxonomy.name(node),
                                             **{f: [] for f in ENTRY_FIELDS if f != "name"}})
            for f, values in fields.items():
                values = [list(v) for v in values] if f == "differentials" else values
                entry[f] = entry[f] + [v for v in values if v not in entry[f]]
        return KnowledgeBase(self.taxonomy, merged.values(), source=f"{self.source}+{source}", complete=False)

    @staticmethod
    def _to_entry(p: Profile) -> dict[str, Any]:
        out: dict[str, Any] = {"name": p.name}
        for f in (*FEATURE_FIELDS, "distinguishing", "rules"):
            out[f] = list(getattr(p, f))
        out["differentials"] = [list(d) for d in p.differentials]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": "skinr1-kb", "version": 1,
                "entries": [self._to_entry(self._profiles[n]) for n in self.node_ids]}

    def to_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))


@lru_cache(maxsize=4)
def _default_kb(taxonomy: Taxonomy) -> KnowledgeBase:
    ref = resources.files("skinr1_jax.knowledge").joinpath("data/knowledge_base.json")
    with resources.as_file(ref) as p:
        # Over a subset, differentials to absent nodes are dropped, so counts may fall below 2.
        return KnowledgeBase.from_file(p, taxonomy, strict=False, complete=False)


def load_default_kb(taxonomy: Taxonomy | None = None) -> KnowledgeBase:
    """The shipped KB over `taxonomy` (default: the shipped taxonomy; a subset works too)."""
    if taxonomy is None:
        from skinr1_jax.taxonomy import load_default_taxonomy
        taxonomy = load_default_taxonomy()
    return _default_kb(taxonomy)
