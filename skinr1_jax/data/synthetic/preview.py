"""A labelled PNG grid of synthetic_derm samples: one row per disease, grouped by subgroup."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skinr1_jax.data.synthetic.dataset import build_specs, render_example


def save_sample_grid(path: str | Path, taxonomy=None, kb=None, subset: str = "default",
                     per_row: int = 8, image_size: int = 64, seed: int = 0,
                     split: str = "validation") -> Path:
    """Renders `per_row` samples of each disease of `subset` (as `split` would) into a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if taxonomy is None:
        from skinr1_jax.taxonomy import load_default_taxonomy
        taxonomy = load_default_taxonomy()
    if kb is None:
        from skinr1_jax.knowledge import load_default_kb
        kb = load_default_kb(taxonomy)
    specs = build_specs({"subset": subset}, taxonomy, kb)
    order = sorted(specs.values(), key=lambda s: [taxonomy.name(p) for p in taxonomy.path(s.node)])
    pad = max(1, image_size // 32)
    rows, labels = [], []
    for spec in order:
        tiles = [render_example(spec, taxonomy, split, i, seed, image_size)["image"] for i in range(per_row)]
        row = np.full((image_size, per_row * (image_size + pad) - pad, 3), 255, np.uint8)
        for k, t in enumerate(tiles):
            row[:, k * (image_size + pad): k * (image_size + pad) + image_size] = t
        rows.append(row)
        sub = taxonomy.name(taxonomy.parent(spec.node))
        labels.append(f"{sub}\n{spec.name}")
    fig, axes = plt.subplots(len(rows), 1, figsize=(per_row * 1.0 + 2.6, len(rows) * 1.02 + 0.3),
                             squeeze=False)
    prev = None
    for ax, row, label, spec in zip(axes[:, 0], rows, labels, order):
        ax.imshow(row, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        sub = taxonomy.parent(spec.node)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8,
                      fontweight="bold" if sub != prev else "normal")
        prev = sub
    fig.suptitle(f"synthetic_derm ({subset} subset, {image_size} px, split {split}, seed {seed}): "
                 "rows grouped by subgroup", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
