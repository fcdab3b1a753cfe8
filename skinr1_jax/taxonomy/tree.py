"""The disease tree: nodes, paths, lowest common ancestors and tree-distance matrices.

A taxonomy file is JSON: `{"nodes": [{"name", "parent", "malignancy"?, "synonyms"?,
"extension"?}, ...]}`. Node ids are the order in the file; exactly one node has `parent: null`
(the root). A node without `malignancy` inherits its parent's. `extension: true` marks nodes
added beyond the Fitzpatrick17k core (dataset subtypes), which the knowledge base need not cover.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from skinr1_jax.jsonfile import read_json
from skinr1_jax.knowledge.vocab import MALIGNANCY_CLASSES
from skinr1_jax.taxonomy.resolve import UNKNOWN, Resolver, normalize

# Fitzpatrick17k's nine-partition "malignant melanoma" has the same name as one of its disease
# labels; node names are unique, so the default tree names that subgroup differently.
NINE_PARTITION_RENAMES = {"malignant melanoma": "malignant melanocytic"}

_NODE_KEYS = {"name", "parent", "malignancy", "synonyms", "extension"}


class TaxonomyError(ValueError):
    """A taxonomy file or node list is malformed."""


@dataclass(frozen=True)
class Node:
    id: int
    name: str
    parent: int | None          # None for the root
    level: int                  # depth; root 0
    malignancy: str | None      # one of MALIGNANCY_CLASSES; None only for a root without one
    synonyms: tuple[str, ...]


class Taxonomy:
    """An immutable rooted tree of diseases with precomputed ancestry."""

    def __init__(self, specs: Sequence[Mapping[str, Any]], source: str = "<nodes>"):
        if not specs:
            raise TaxonomyError(f"{source}: taxonomy has no nodes")
        self.source = source
        names: dict[str, int] = {}
        for i, spec in enumerate(specs):
            if not isinstance(spec, Mapping):
                raise TaxonomyError(f"{source}: node #{i} is not an object")
            unknown = set(spec) - _NODE_KEYS
            if unknown:
                raise TaxonomyError(f"{source}: node #{i} ({spec.get('name')!r}) has unknown keys {sorted(unknown)}")
            name = spec.get("name")
            if not isinstance(name, str) or not name.strip():
                raise TaxonomyError(f"{source}: node #{i} has no name")
            if name in names:
                raise TaxonomyError(f"{source}: duplicate node name {name!r}")
            names[name] = i
        parents: list[int | None] = []
        for i, spec in enumerate(specs):
            p = spec.get("parent")
            if p is None:
                parents.append(None)
            elif p not in names:
                raise TaxonomyError(f"{source}: node {spec['name']!r} has missing parent {p!r}")
            else:
                parents.append(names[p])
        roots = [specs[i]["name"] for i, p in enumerate(parents) if p is None]
        if len(roots) != 1:
            raise TaxonomyError(f"{source}: expected exactly one root (parent null), found {roots}")
        self._parent = parents
        self._levels = self._compute_levels(specs, source)
        self._names = tuple(s["name"] for s in specs)
        self._name_to_id = names
        self._extension = tuple(bool(s.get("extension", False)) for s in specs)
        malignancy = self._compute_malignancy(specs, source)
        synonyms = self._check_synonyms(specs, source)
        self.nodes: tuple[Node, ...] = tuple(
            Node(i, self._names[i], parents[i], self._levels[i], malignancy[i], synonyms[i])
            for i in range(len(specs)))
        self.root = parents.index(None)
        kids: list[list[int]] = [[] for _ in specs]
        for i, p in enumerate(parents):
            if p is not None:
                kids[p].append(i)
        self._children = tuple(tuple(k) for k in kids)
        self._paths = tuple(self._path_of(i) for i in range(len(specs)))
        self._resolver = Resolver((n.id, (n.name, *n.synonyms)) for n in self.nodes)

    # ---- construction helpers -------------------------------------------------------------
    def _compute_levels(self, specs: Sequence[Mapping[str, Any]], source: str) -> tuple[int, ...]:
        levels = [-1] * len(specs)
        for start in range(len(specs)):
            chain, i, seen = [], start, set()
            while i is not None and levels[i] < 0:
                if i in seen:
                    raise TaxonomyError(f"{source}: cycle through node {specs[i]['name']!r}")
                seen.add(i)
                chain.append(i)
                i = self._parent[i]
            base = -1 if i is None else levels[i]
            for k, j in enumerate(reversed(chain)):
                levels[j] = base + 1 + k
        return tuple(levels)

    def _compute_malignancy(self, specs: Sequence[Mapping[str, Any]], source: str) -> list[str | None]:
        order = sorted(range(len(specs)), key=lambda i: self._levels[i])
        out: list[str | None] = [None] * len(specs)
        for i in order:
            m = specs[i].get("malignancy")
            if m is not None and m not in MALIGNANCY_CLASSES:
                raise TaxonomyError(f"{source}: node {specs[i]['name']!r} has malignancy {m!r}; "
                                    f"expected one of {MALIGNANCY_CLASSES}")
            p = self._parent[i]
            out[i] = m if m is not None else (None if p is None else out[p])
            if out[i] is None and p is not None:
                raise TaxonomyError(f"{source}: node {specs[i]['name']!r} has no malignancy and "
                                    f"inherits none from its parent")
        return out

    def _check_synonyms(self, specs: Sequence[Mapping[str, Any]], source: str) -> list[tuple[str, ...]]:
        # An exact (case-insensitive) clash is a file error; looser normalised overlaps are
        # merely ambiguous and resolve to UNKNOWN.
        owner = {n.lower().strip(): i for i, n in enumerate(self._names)}
        out = []
        for i, spec in enumerate(specs):
            syns = spec.get("synonyms", [])
            if not isinstance(syns, list) or not all(isinstance(s, str) and s.strip() for s in syns):
                raise TaxonomyError(f"{source}: node {spec['name']!r} synonyms must be a list of non-empty strings")
            for s in syns:
                key = s.lower().strip()
                if key in owner and owner[key] != i:
                    raise TaxonomyError(f"{source}: synonym {s!r} of node {spec['name']!r} clashes with "
                                        f"node {self._names[owner[key]]!r}")
                owner[key] = i
            out.append(tuple(syns))
        return out

    def _path_of(self, i: int) -> tuple[int, ...]:
        path = []
        while self._parent[i] is not None:
            path.append(i)
            i = self._parent[i]
        return tuple(reversed(path))

    # ---- loading / saving -----------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> Taxonomy:
        path = Path(path)
        data = read_json(path, TaxonomyError, "taxonomy file")
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise TaxonomyError(f"{path}: expected a JSON object with a 'nodes' list")
        return cls(data["nodes"], source=str(path))

    def to_dict(self) -> dict[str, Any]:
        nodes = []
        for n in self.nodes:
            d: dict[str, Any] = {"name": n.name, "parent": None if n.parent is None else self._names[n.parent]}
            if n.malignancy is not None:
                d["malignancy"] = n.malignancy
            if n.synonyms:
                d["synonyms"] = list(n.synonyms)
            if self._extension[n.id]:
                d["extension"] = True
            nodes.append(d)
        return {"format": "skinr1-taxonomy", "version": 1, "nodes": nodes}

    def to_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    # ---- lookups ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    def id(self, name: str) -> int:
        """Exact canonical name -> id (KeyError naming the name otherwise)."""
        try:
            return self._name_to_id[name]
        except KeyError:
            raise KeyError(f"no taxonomy node named {name!r}") from None

    def node(self, i: int) -> Node:
        return self.nodes[i]

    def name(self, i: int) -> str:
        return self._names[i]

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def children(self, i: int) -> list[int]:
        return list(self._children[i])

    def parent(self, i: int) -> int | None:
        return self._parent[i]

    def path(self, i: int) -> list[int]:
        """Ancestors coarse -> fine, root excluded, ending at i (empty for the root)."""
        return list(self._paths[i])

    def depth(self, i: int) -> int:
        return self._levels[i]

    def is_ancestor(self, a: int, b: int) -> bool:
        """True when a is b or an ancestor of b."""
        return a == self.root or a in self._paths[b]

    def lca(self, a: int, b: int) -> int:
        pa, pb = self._paths[a], self._paths[b]
        k = 0
        while k < min(len(pa), len(pb)) and pa[k] == pb[k]:
            k += 1
        return pa[k - 1] if k else self.root

    def leaves(self) -> list[int]:
        return [i for i, c in enumerate(self._children) if not c]

    def malignancy(self, i: int) -> str | None:
        return self.nodes[i].malignancy

    def is_extension(self, i: int) -> bool:
        """True for nodes added beyond the Fitzpatrick17k core (dataset subtypes)."""
        return self._extension[i]

    def core_ids(self) -> list[int]:
        """Ids of all non-extension nodes except the root."""
        return [i for i in range(len(self)) if not self._extension[i] and i != self.root]

    def resolve(self, text: str) -> int:
        """Free text -> node id via normalised names and synonyms; UNKNOWN if absent or ambiguous."""
        return self._resolver(text)

    # ---- matrices --------------------------------------------------------------------------
    @cached_property
    def _ancestor_matrix(self) -> np.ndarray:
        # A[i, j] = 1 when j is i or an ancestor of i (root included).
        a = np.zeros((len(self), len(self)), np.int32)
        for i, p in enumerate(self._paths):
            a[i, list(p)] = 1
        a[:, self.root] = 1
        return a

    @cached_property
    def _shared(self) -> np.ndarray:
        a = self._ancestor_matrix
        m = (a @ a.T - 1).astype(np.int32)   # common ancestors minus the root = depth(lca)
        m.flags.writeable = False
        return m

    @cached_property
    def _distance(self) -> np.ndarray:
        d = np.asarray(self._levels, np.int32)
        m = (d[:, None] + d[None, :] - 2 * self._shared).astype(np.int32)
        m.flags.writeable = False
        return m

    def shared_depth_matrix(self) -> np.ndarray:
        """int32[N, N]: depth of the lowest common ancestor (read-only)."""
        return self._shared

    def distance_matrix(self) -> np.ndarray:
        """int32[N, N]: number of edges between two nodes (read-only)."""
        return self._distance

    # ---- restriction -----------------------------------------------------------------------
    def subset(self, nodes: Iterable[int | str]) -> Taxonomy:
        """The tree restricted to `nodes` (ids or canonical names) and their ancestors; ids renumbered."""
        keep = {self.root}
        for x in nodes:
            i = self.id(x) if isinstance(x, str) else int(x)
            if not 0 <= i < len(self):
                raise KeyError(f"node id {i} out of range for a taxonomy of {len(self)} nodes")
            keep.update(self._paths[i])
        specs = []
        for i in sorted(keep):
            n = self.nodes[i]
            d: dict[str, Any] = {"name": n.name, "parent": None if n.parent is None else self._names[n.parent],
                                 "synonyms": list(n.synonyms)}
            if n.malignancy is not None:
                d["malignancy"] = n.malignancy
            if self._extension[i]:
                d["extension"] = True
            specs.append(d)
        return Taxonomy(specs, source=f"{self.source}[subset]")


@lru_cache(maxsize=1)
def load_default_taxonomy() -> Taxonomy:
    """The shipped Fitzpatrick17k-based tree (cached; the object is immutable)."""
    ref = resources.files("skinr1_jax.taxonomy").joinpath("data/taxonomy.json")
    with resources.as_file(ref) as p:
        return Taxonomy.from_file(p)

__all__ = ["NINE_PARTITION_RENAMES", "Node", "Taxonomy", "TaxonomyError", "UNKNOWN", "load_default_taxonomy", "normalize"]
