"""The paper's split rule, leak-free by group, and nested fractional training subsets.

Rule (Skin-R1 `split_dataset`): keep a dataset's official train/validation/test split; with only
train and test, split train 75/25 into train/validation; with none, split 60/20/20 by seed.
Samples that share a group key (patient, lesion, case) always land in the same split, because
views of one lesion in both train and test inflate test accuracy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "validation", "test")
TRAIN_FRACTIONS = (0.01, 0.05, 0.1, 0.2)

_OFFICIAL_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}


def normalize_split_name(name: str, *, where: str = "") -> str:
    """Maps an official split spelling (train, valid, val, test, ...) to one of `SPLITS`."""
    key = name.strip().lower()
    if key not in _OFFICIAL_ALIASES:
        raise ValueError(
            f"unknown split name {name!r}{' in ' + where if where else ''}; "
            f"expected one of {sorted(_OFFICIAL_ALIASES)}")
    return _OFFICIAL_ALIASES[key]


def _seeded_order(keys: Sequence[str], seed: int) -> list[str]:
    # Sort first so the result depends on the set of keys and the seed, not on row order.
    unique = sorted(set(keys))
    perm = np.random.default_rng(seed).permutation(len(unique))
    return [unique[i] for i in perm]


def split_by_group(
    groups: Sequence[str], fractions: Sequence[float], names: Sequence[str], seed: int,
) -> list[str]:
    """Assigns each sample (given by its group key) to one of `names` in proportion `fractions`.

    Whole groups are assigned, in a seeded order, to the split whose cumulative share of samples
    the group's midpoint falls in, so split sizes track `fractions` while no group straddles.
    """
    if len(fractions) != len(names) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions {tuple(fractions)} must match {tuple(names)} and sum to 1")
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    bounds = np.cumsum(fractions)
    total = len(groups)
    seen = 0
    assignment: dict[str, str] = {}
    for g in _seeded_order(list(counts), seed):
        mid = (seen + counts[g] / 2) / max(total, 1)
        assignment[g] = names[min(int(np.searchsorted(bounds, mid, side="right")), len(names) - 1)]
        seen += counts[g]
    return [assignment[g] for g in groups]


def assign_splits(
    keys: Sequence[str],
    official: Sequence[str | None],
    groups: Sequence[str | None] | None = None,
    seed: int = 42,
) -> list[str]:
    """Returns the split of each sample under the paper's rule.

    keys: unique sample ids. official: each sample's official split (any spelling accepted by
    `normalize_split_name`) or None where the dataset has none. groups: patient / lesion / case
    key per sample (None = the sample is its own group).
    """
    n = len(keys)
    if len(official) != n or (groups is not None and len(groups) != n):
        raise ValueError(f"keys ({n}), official ({len(official)}) and groups "
                         f"({None if groups is None else len(groups)}) must have equal length")
    seen: set[str] = set()
    for k in keys:
        if k in seen:
            raise ValueError(f"duplicate sample id {k!r}")
        seen.add(k)
    group_of = [(f"#{k}" if groups is None or groups[i] is None else f"g:{groups[i]}")
                for i, k in enumerate(keys)]
    given = {o for o in official if o is not None}
    if given and len(given) < n and any(o is None for o in official):
        missing = next(k for k, o in zip(keys, official) if o is None)
        raise ValueError(f"sample {missing!r} has no official split while others do")
    norm = [None if o is None else normalize_split_name(o) for o in official]
    present = {o for o in norm if o is not None}

    if "validation" in present or present == {"test"}:
        return [str(o) for o in norm]
    if present == {"train", "test"}:
        train = [i for i, o in enumerate(norm) if o == "train"]
        sub = split_by_group([group_of[i] for i in train], (0.75, 0.25), ("train", "validation"),
                             seed)
        out = [str(o) for o in norm]
        for i, s in zip(train, sub):
            out[i] = s
        return out
    return split_by_group(group_of, (0.6, 0.2, 0.2), SPLITS, seed)


def train_subset(ids: Sequence[str], fraction: float, seed: int = 42) -> list[int]:
    """Indices of a deterministic `fraction` of `ids` (at least one sample when ids is non-empty).

    Subsets are nested for a seed (1% inside 5% inside 10% ...), so data-scaling runs differ
    only in how much data they see. The order is a seeded hash of each id, hence independent of
    the order the records were stored in.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ranked = sorted(range(len(ids)), key=lambda i: _seeded_hash(ids[i], seed))
    k = max(1, round(fraction * len(ids))) if ids else 0
    return sorted(ranked[:k])


def _seeded_hash(key: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()
