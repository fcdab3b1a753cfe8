"""Free-text disease names -> taxonomy node ids, by normalisation and exact lookup only.

Both the taxonomy's names/synonyms and the query go through `normalize`, so spelling variants
meet in one key. A key owned by more than one node is ambiguous and resolves to UNKNOWN: the
resolver never guesses.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

UNKNOWN = -1

# British / Latin spellings folded onto one form (applied to whole words' prefixes).
_SPELLING = (
    ("naev", "nev"), ("haem", "hem"), ("oedem", "edem"), ("leukaem", "leukem"),
    ("seborrhoe", "seborrhe"), ("tumour", "tumor"), ("oesophag", "esophag"),
)
# Irregular plurals; the regular ones are handled by `_singular`.
_IRREGULAR = {"nevi": "nevus", "angiomata": "angioma", "lentigines": "lentigo", "milium": "milia"}
_NON_WORD = re.compile(r"[^a-z0-9]+")


def _singular(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("oses"):
        return word[:-2] + "is"          # keratoses -> keratosis
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]                  # eruptions -> eruption, bowens -> bowen
    return word


def normalize(text: str) -> str:
    """Canonical lookup key: lowercase, ASCII, no punctuation/possessives, singular words."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"['\u2019`]s\b", "", text)      # possessive: bowen's -> bowen
    words = []
    for word in _NON_WORD.sub(" ", text).split():
        for old, new in _SPELLING:
            if word.startswith(old):
                word = new + word[len(old):]
        words.append(_singular(word))
    return " ".join(words)


class Resolver:
    """Maps normalised names to node ids; keys shared by several nodes map to UNKNOWN."""

    def __init__(self, entries: Iterable[tuple[int, Iterable[str]]]):
        owners: dict[str, set[int]] = {}
        for node_id, names in entries:
            for name in names:
                key = normalize(name)
                if key:
                    owners.setdefault(key, set()).add(node_id)
        self._table = {k: (next(iter(v)) if len(v) == 1 else UNKNOWN) for k, v in owners.items()}
        self.ambiguous = tuple(sorted(k for k, v in owners.items() if len(v) > 1))

    def __call__(self, text: str) -> int:
        if not isinstance(text, str):
            return UNKNOWN
        return self._table.get(normalize(text), UNKNOWN)
