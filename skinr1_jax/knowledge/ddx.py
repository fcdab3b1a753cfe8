"""The differential-diagnosis graph: undirected edges between taxonomy nodes.

Names are resolved through the taxonomy, so synonyms of one disease collapse onto one node;
self loops are dropped. Each edge may carry the visible feature that separates the pair.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

# Only the resolver module at import time: taxonomy.tree imports knowledge.vocab.
from skinr1_jax.taxonomy.resolve import UNKNOWN

if TYPE_CHECKING:
    from skinr1_jax.taxonomy import Taxonomy


class DDxGraphError(ValueError):
    """A DDx graph file or edge list is malformed."""


class DDxGraph:
    def __init__(self, taxonomy: Taxonomy,
                 pairs: Iterable[tuple[int | str, int | str] | tuple[int | str, int | str, str]]):
        self.taxonomy = taxonomy
        self._adj: dict[int, set[int]] = {}
        self._features: dict[tuple[int, int], str] = {}
        for pair in pairs:
            a, b = self._node(pair[0]), self._node(pair[1])
            if a == b:
                continue
            key = (min(a, b), max(a, b))
            self._adj.setdefault(a, set()).add(b)
            self._adj.setdefault(b, set()).add(a)
            if len(pair) > 2 and pair[2] and key not in self._features:
                self._features[key] = pair[2]

    def _node(self, x: int | str) -> int:
        if isinstance(x, str):
            i = self.taxonomy.resolve(x)
            if i == UNKNOWN:
                raise DDxGraphError(f"DDx name {x!r} does not resolve to a taxonomy node")
            return i
        if not 0 <= int(x) < len(self.taxonomy):
            raise DDxGraphError(f"DDx node id {x} out of range")
        return int(x)

    def neighbors(self, node_id: int) -> list[int]:
        return sorted(self._adj.get(node_id, ()))

    @property
    def edges(self) -> list[tuple[int, int]]:
        return sorted({(min(a, b), max(a, b)) for a, nb in self._adj.items() for b in nb})

    def feature(self, a: int, b: int) -> str | None:
        """The separating feature recorded for the pair (either order), if any."""
        return self._features.get((min(a, b), max(a, b)))

    def to_file(self, path: str | Path) -> None:
        name = self.taxonomy.name
        edges = [[name(a), name(b), self._features.get((a, b), "")] for a, b in self.edges]
        Path(path).write_text(json.dumps({"format": "skinr1-ddx", "version": 1, "edges": edges}, indent=1))

    @classmethod
    def from_file(cls, path: str | Path, taxonomy: Taxonomy) -> DDxGraph:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            edges = data["edges"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise DDxGraphError(f"{path}: unreadable DDx graph file ({e!r})") from None
        for k, e in enumerate(edges):
            if not (isinstance(e, list) and len(e) in (2, 3) and all(isinstance(x, str) for x in e)):
                raise DDxGraphError(f"{path}: edge #{k} must be [name, name] or [name, name, feature]")
        try:
            return cls(taxonomy, [tuple(e) for e in edges])
        except DDxGraphError as e:
            raise DDxGraphError(f"{path}: {e}") from None
