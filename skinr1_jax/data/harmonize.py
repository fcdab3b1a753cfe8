"""Dataset labels -> taxonomy nodes, through one reviewed mapping table per dataset.

A table is `label_maps/<dataset>.json`:
```
{"dataset": ..., "column": <raw label column>, "source": <where the label set comes from>,
 "fallback": "none" | "resolver" | "resolver_prefix",
 "labels": {<raw label>: <canonical taxonomy node name> | null}, "notes": {<raw label>: why}}
```
Keys are matched after `taxonomy.normalize` (case, punctuation, plurals), so a table lists each
label as the dataset spells it. `null` marks a label reviewed and left without a home. Labels
absent from the table go to the taxonomy resolver only where the table's `fallback` allows it
(free-text sources such as DermNet file names and OmniMedVQA answers); `resolver_prefix` also
tries ever shorter leading word runs ("basal cell carcinoma face" -> "basal cell carcinoma").
Every label that finds no node is counted in a `HarmonizationReport`, never silently dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from skinr1_jax.jsonfile import read_json
from skinr1_jax.taxonomy import UNKNOWN, Taxonomy, normalize

FALLBACKS = ("none", "resolver", "resolver_prefix")
_TABLE_KEYS = {"dataset", "column", "source", "fallback", "labels", "notes"}


class LabelMapError(ValueError):
    """A mapping table is malformed or names a node the taxonomy lacks."""


@dataclass(frozen=True)
class Harmonized:
    label: str                  # canonical taxonomy node name
    node: int
    path: tuple[int, ...]       # coarse -> fine, root excluded, ends at node
    malignancy: str | None      # None only when the node has no class (e.g. the root)


@dataclass(frozen=True)
class LabelMap:
    dataset: str
    column: str
    source: str
    fallback: str
    labels: Mapping[str, str | None]     # normalised raw label -> node name or None
    raw_keys: Mapping[str, str]           # normalised -> raw label as written in the table

    @classmethod
    def load(cls, dataset: str) -> LabelMap:
        """The shipped table for `dataset` (cached)."""
        return _load_shipped(dataset)

    @classmethod
    def from_file(cls, path: str | Path) -> LabelMap:
        path = Path(path)
        data = read_json(path, LabelMapError, "label map")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<label map>") -> LabelMap:
        if not isinstance(data, Mapping) or not isinstance(data.get("labels"), Mapping):
            raise LabelMapError(f"{source}: expected an object with a 'labels' object")
        unknown = set(data) - _TABLE_KEYS
        if unknown:
            raise LabelMapError(f"{source}: unknown keys {sorted(unknown)}")
        for key in ("dataset", "column"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise LabelMapError(f"{source}: missing {key!r}")
        fallback = data.get("fallback", "none")
        if fallback not in FALLBACKS:
            raise LabelMapError(f"{source}: fallback {fallback!r} not in {FALLBACKS}")
        labels: dict[str, str | None] = {}
        raw_keys: dict[str, str] = {}
        for raw, target in data["labels"].items():
            key = normalize(raw)
            if not key:
                raise LabelMapError(f"{source}: empty raw label {raw!r}")
            if key in labels and labels[key] != target:
                raise LabelMapError(f"{source}: raw labels {raw_keys[key]!r} and {raw!r} normalise "
                                    f"to the same key but map to {labels[key]!r} and {target!r}")
            if target is not None and (not isinstance(target, str) or not target):
                raise LabelMapError(f"{source}: target of {raw!r} must be a node name or null")
            labels[key] = target
            raw_keys.setdefault(key, raw)
        return cls(data["dataset"], data["column"], str(data.get("source", "")), fallback,
                   labels, raw_keys)

    def targets(self) -> dict[str, str]:
        """Raw label -> node name, for every label the table homes."""
        return {self.raw_keys[k]: v for k, v in self.labels.items() if v is not None}

    def unhomed(self) -> list[str]:
        """Raw labels the table lists as reviewed but without a home."""
        return [self.raw_keys[k] for k, v in self.labels.items() if v is None]

    def check(self, taxonomy: Taxonomy) -> None:
        """Raises LabelMapError naming every target that is not a node of `taxonomy`."""
        missing = sorted({v for v in self.labels.values() if v is not None} - set(taxonomy.names))
        if missing:
            raise LabelMapError(f"label map {self.dataset!r} targets unknown taxonomy nodes {missing}")

    def lookup(self, raw_label: str, taxonomy: Taxonomy) -> int:
        """Node id for one raw label, or UNKNOWN."""
        key = normalize(raw_label) if isinstance(raw_label, str) else ""
        if not key:
            return UNKNOWN
        if key in self.labels:
            target = self.labels[key]
            if target is None:
                return UNKNOWN
            try:
                return taxonomy.id(target)
            except KeyError:
                raise LabelMapError(f"label map {self.dataset!r}: {self.raw_keys[key]!r} -> {target!r}, "
                                    f"which is not a node of the taxonomy") from None
        if self.fallback == "none":
            return UNKNOWN
        node = taxonomy.resolve(key)
        if node != UNKNOWN or self.fallback != "resolver_prefix":
            return node
        words = key.split()
        for n in range(len(words) - 1, 0, -1):
            head = " ".join(words[:n])
            if head in self.labels:
                return self.lookup(head, taxonomy)
            node = taxonomy.resolve(head)
            if node != UNKNOWN:
                return node
        return UNKNOWN


@lru_cache(maxsize=None)
def _load_shipped(dataset: str) -> LabelMap:
    ref = resources.files("skinr1_jax.data").joinpath(f"label_maps/{dataset}.json")
    if not ref.is_file():
        raise LabelMapError(f"no label map for dataset {dataset!r}; shipped maps: {available_maps()}")
    with resources.as_file(ref) as p:
        table = LabelMap.from_file(p)
    if table.dataset != dataset:
        raise LabelMapError(f"label_maps/{dataset}.json declares dataset {table.dataset!r}")
    return table


def available_maps() -> list[str]:
    """Names of the datasets with a shipped mapping table."""
    root = resources.files("skinr1_jax.data").joinpath("label_maps")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


@dataclass
class HarmonizationReport:
    """What happened to each raw label of one dataset: mapped, unmapped, or dropped."""

    dataset: str
    mapped: Counter = field(default_factory=Counter)          # raw label -> samples mapped
    unmapped: Counter = field(default_factory=Counter)        # raw label -> samples with no node
    no_malignancy: Counter = field(default_factory=Counter)   # raw label -> samples dropped
    bad_images: list[str] = field(default_factory=list)       # skipped files, with the reason
    unparsed: list[str] = field(default_factory=list)         # files whose name gives no label
    excluded: Counter = field(default_factory=Counter)        # reason -> samples the source flags out

    @property
    def num_mapped(self) -> int:
        return sum(self.mapped.values())

    @property
    def num_unmapped(self) -> int:
        return sum(self.unmapped.values())

    @property
    def num_dropped_no_malignancy(self) -> int:
        return sum(self.no_malignancy.values())

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset,
                "mapped": dict(sorted(self.mapped.items())),
                "unmapped": dict(self.unmapped.most_common()),
                "no_malignancy": dict(self.no_malignancy.most_common()),
                "bad_images": list(self.bad_images),
                "unparsed": list(self.unparsed),
                "excluded": dict(self.excluded)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HarmonizationReport:
        return cls(d["dataset"], Counter(d.get("mapped", {})), Counter(d.get("unmapped", {})),
                   Counter(d.get("no_malignancy", {})), list(d.get("bad_images", [])),
                   list(d.get("unparsed", [])), Counter(d.get("excluded", {})))

    def summary(self) -> str:
        parts = [f"{self.dataset}: {self.num_mapped} samples mapped"]
        if self.unmapped:
            top = ", ".join(f"{k!r} x{v}" for k, v in self.unmapped.most_common(10))
            parts.append(f"{self.num_unmapped} unmapped ({len(self.unmapped)} labels: {top})")
        if self.no_malignancy:
            parts.append(f"{self.num_dropped_no_malignancy} dropped for no malignancy class")
        if self.bad_images:
            parts.append(f"{len(self.bad_images)} bad images skipped")
        if self.unparsed:
            parts.append(f"{len(self.unparsed)} files with no label in their name")
        if self.excluded:
            parts.append(f"{sum(self.excluded.values())} excluded by the source's own flags")
        return "; ".join(parts)


def harmonize(
    dataset: str,
    raw_label: str,
    taxonomy: Taxonomy,
    *,
    fallbacks: Sequence[str] = (),
    report: HarmonizationReport | None = None,
    table: LabelMap | None = None,
) -> Harmonized | None:
    """Maps one raw label to its taxonomy node, path and malignancy class (None when unmapped).

    `fallbacks` are coarser descriptions of the same sample tried in order after the raw label
    (Derm12345's sub_class / main_class columns). With a `report`, the outcome is counted under
    the raw label: mapped, unmapped, or no_malignancy (mapped to a node without a class, which
    callers drop).
    """
    table = table or LabelMap.load(dataset)
    node = UNKNOWN
    for text in (raw_label, *fallbacks):
        node = table.lookup(text, taxonomy)
        if node != UNKNOWN:
            break
    key = str(raw_label)
    if node == UNKNOWN:
        if report is not None:
            report.unmapped[key] += 1
        return None
    result = Harmonized(taxonomy.name(node), node, tuple(taxonomy.path(node)), taxonomy.malignancy(node))
    if report is not None:
        (report.mapped if result.malignancy is not None else report.no_malignancy)[key] += 1
    return result


def check_all_maps(taxonomy: Taxonomy, datasets: Iterable[str] | None = None) -> None:
    """Raises LabelMapError if any shipped table targets a node `taxonomy` lacks."""
    for name in datasets or available_maps():
        LabelMap.load(name).check(taxonomy)
