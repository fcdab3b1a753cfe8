"""Pictures people would rather see than read: training curves, accuracy per tree level,
confusion over the tree. Each function writes one PNG and returns its path."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: plots are files next to the metrics
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_curves(workdir: Path, out: Path) -> Path:
    """Loss per stage and RL reward (per component) against step, from <workdir>/metrics.jsonl."""
    from skinr1_jax.train.logging import read_metrics

    rows = read_metrics(workdir)
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_stage[row.get("stage", "?")].append(row)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for stage, stage_rows in by_stage.items():
        steps = [r["step"] for r in stage_rows if "loss" in r]
        axes[0].plot(steps, [r["loss"] for r in stage_rows if "loss" in r], label=stage)
    axes[0].set(title="loss", xlabel="step")
    rl = by_stage.get("rl", [])
    reward_keys = sorted({k for r in rl for k in r if k.startswith("reward")})
    for key in reward_keys:
        axes[1].plot([r["step"] for r in rl if key in r], [r[key] for r in rl if key in r],
                     label=key)
    axes[1].set(title="RL reward", xlabel="step")
    for key in ("kl", "entropy"):
        axes[2].plot([r["step"] for r in rl if key in r], [r[key] for r in rl if key in r],
                     label=key)
    axes[2].set(title="RL KL / entropy", xlabel="step")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def accuracy_by_level(results: Mapping[str, Mapping[str, float]], out: Path,
                      keys: Sequence[str] = ("acc_level1", "acc_level2", "acc_leaf")) -> Path:
    """Grouped bars: open-ended accuracy at each tree level, one group per model."""
    models = list(results)
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, model in enumerate(models):
        values = [float(results[model].get(k, np.nan)) for k in keys]
        ax.bar(x + i * width, values, width, label=model)
    ax.set_xticks(x + width * (len(models) - 1) / 2, ["group", "subgroup", "disease"])
    ax.set(ylim=(0, 1), ylabel="accuracy", title="Open-ended accuracy per taxonomy level")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def tree_confusion(matrix: np.ndarray, labels: Sequence[str], out: Path, title: str) -> Path:
    """Row-normalised confusion; rows/columns ordered as the tree, with a final `unknown`
    column for answers that resolve to no node."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 2 + 0.35 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_yticks(range(norm.shape[0]), labels[: norm.shape[0]], fontsize=7)
    ax.set_xticks(range(norm.shape[1]), list(labels[: norm.shape[1]]), fontsize=7, rotation=90)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
