"""synthetic_derm: the embedded dataset, as `Example` dicts in five splits.

Splits: dense_train (concept-annotated; trajectories and SFT), sparse_train (labels only,
concepts=[]; RL), validation, test, and ood_test (mostly Fitzpatrick V-VI skin with heavy blur,
colour cast, noise and JPEG, which training rarely sees). validation, test and ood_test keep their
ground-truth concepts for concept metrics.

Node ids: `node` and `path` are ids of the `taxonomy` passed in; diseases are looked up by name,
so pass the full default taxonomy (recommended; ids then match every other dataset) or a
`taxonomy.subset(...)` that contains the chosen diseases. Profiles come from `kb` by name.

Sizes: `*_per_class` from the data config. class_balance="fitzpatrick" gives the training splits
the real Fitzpatrick17k class frequencies (same total as balanced, at least one per class) and
keeps the evaluation splits balanced so every class is measured. train_fraction keeps a prefix of
each class's training examples, so smaller fractions are nested in larger ones.

Every example has its own seed (seed, split, disease name, index): images are byte-identical for
a seed, independent of which other diseases or splits are built, and can be rendered in any order.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skinr1_jax.data.synthetic.render import render_features, feature_concepts, sample_acquisition
from skinr1_jax.data.synthetic.signature import RenderSpec, render_specs
from skinr1_jax.data.synthetic.subsets import (
    FITZPATRICK17K_COUNTS, FITZPATRICK17K_SKIN_TYPE_COUNTS, leaf_names)

DATASET = "synthetic_derm"
SPLITS = ("dense_train", "sparse_train", "validation", "test", "ood_test")
TRAIN_SPLITS = ("dense_train", "sparse_train")
_PER_CLASS_KEY = {"dense_train": "dense_per_class", "sparse_train": "sparse_per_class",
                  "validation": "val_per_class", "test": "test_per_class", "ood_test": "ood_per_class"}

# Skin types: in-distribution follows Fitzpatrick17k's I-IV mix with V-VI cut to a tenth of their
# real share; out-of-distribution is mostly V-VI.
_ST = np.array([FITZPATRICK17K_SKIN_TYPE_COUNTS[t] for t in range(1, 7)], np.float64)
SKIN_TYPE_PROBS_IN = _ST * np.array([1, 1, 1, 1, 0.1, 0.1]) / (_ST * np.array([1, 1, 1, 1, 0.1, 0.1])).sum()
SKIN_TYPE_PROBS_OOD = np.array([0.025, 0.025, 0.025, 0.025, 0.45, 0.45])


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def resolve_leaves(taxonomy, subset: str) -> list[int]:
    """Node ids (in `taxonomy`) of the diseases of a named subset."""
    ids = []
    for name in leaf_names(subset):
        try:
            ids.append(taxonomy.id(name))
        except KeyError:
            raise KeyError(f"synthetic_derm subset {subset!r}: disease {name!r} is not in the taxonomy passed "
                           f"({getattr(taxonomy, 'source', '?')}); pass the full default taxonomy") from None
    return ids


def class_counts(data_cfg: Any, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Examples per split per disease name, from the data config."""
    balance = _get(data_cfg, "class_balance", "balanced")
    if balance not in ("balanced", "fitzpatrick"):
        raise ValueError(f"data.class_balance={balance!r}: expected 'balanced' or 'fitzpatrick'")
    frac = float(_get(data_cfg, "train_fraction", 1.0))
    if not 0 < frac <= 1:
        raise ValueError(f"data.train_fraction={frac!r}: expected a value in (0, 1]")
    weights = np.array([FITZPATRICK17K_COUNTS.get(n, 0) for n in names], np.float64)
    if balance == "fitzpatrick" and (weights <= 0).any():
        missing = [n for n, w in zip(names, weights) if w <= 0]
        raise ValueError(f"data.class_balance='fitzpatrick': no Fitzpatrick17k count for {missing}")
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        per = _get(data_cfg, _PER_CLASS_KEY[split])
        if not isinstance(per, (int, np.integer)) or per < 0:
            raise ValueError(f"data.{_PER_CLASS_KEY[split]}={per!r}: expected an integer >= 0")
        if split in TRAIN_SPLITS and balance == "fitzpatrick":
            raw = weights / weights.sum() * per * len(names)
            counts = [max(1, round(x)) for x in raw] if per else [0] * len(names)
        else:
            counts = [int(per)] * len(names)
        if split in TRAIN_SPLITS:
            counts = [max(1, math.ceil(c * frac)) if c else 0 for c in counts]
        out[split] = dict(zip(names, counts))
    return out


def example_rng(seed: int, split: str, name: str, index: int) -> np.random.Generator:
    """The generator of one example: a function of (seed, split, disease name, index) only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, SPLITS.index(split), zlib.crc32(name.encode()), index])


def render_example(spec: RenderSpec, taxonomy, split: str, index: int, seed: int, size: int) -> dict:
    """One `Example` dict of disease `spec` (see docs/architecture.md)."""
    rng = example_rng(seed, split, spec.name, index)
    ood = split == "ood_test"
    skin_type = int(rng.choice(6, p=SKIN_TYPE_PROBS_OOD if ood else SKIN_TYPE_PROBS_IN)) + 1
    acq = sample_acquisition(rng, ood=ood)
    image, feats = render_features(spec.profile, skin_type, rng, size, acq, spec.signature)
    return {
        "id": f"{DATASET}/{split}/{spec.name.replace(' ', '_')}/{index:05d}",
        "dataset": DATASET,
        "image": image,
        "label": spec.name,
        "node": int(spec.node),
        "path": [int(p) for p in taxonomy.path(spec.node)],
        "malignancy": taxonomy.malignancy(spec.node),
        "skin_type": skin_type,
        "concepts": [] if split == "sparse_train" else feature_concepts(feats),
    }


def build_specs(data_cfg: Any, taxonomy, kb) -> dict[int, RenderSpec]:
    """RenderSpec per disease of the configured subset (node ids of `taxonomy`)."""
    return render_specs(taxonomy, kb, resolve_leaves(taxonomy, _get(data_cfg, "subset", "default")))


def build_splits(data_cfg: Any, taxonomy, kb, seed: int) -> dict[str, list[dict]]:
    """All five splits as lists of `Example` dicts, class by class in subset order."""
    size = _get(data_cfg, "image_size", 64)
    if not isinstance(size, (int, np.integer)) or not 32 <= size <= 512:
        raise ValueError(f"data.image_size={size!r}: expected an integer in 32..512 (64-224 typical)")
    specs = build_specs(data_cfg, taxonomy, kb)
    counts = class_counts(data_cfg, [s.name for s in specs.values()])
    return {split: [render_example(spec, taxonomy, split, i, seed, int(size))
                    for spec in specs.values() for i in range(counts[split][spec.name])]
            for split in SPLITS}
