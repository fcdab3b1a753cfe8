"""Evaluation metrics from per-example predictions, in plain numpy.

Conventions (documented because the paper gives none for the open-ended form):
- Levels are taxonomy depths (root 0, groups 1, subgroups 2). Accuracy at level k compares the
  ancestors at depth min(k, depth(truth)): a truth labelled only down to a group is judged at the
  group. A prediction shallower than that depth, or UNKNOWN, is wrong. Leaf accuracy is exact
  node equality.
- An UNKNOWN prediction is as far as anything in the tree can be: its tree distance is the
  tree's diameter (`unknown_distance`), and its ancestor set is empty for hierarchical F1.
- Hierarchical precision/recall/F1 are micro-averaged over examples on ancestor sets that
  include the node itself and exclude the root (Kiritchenko et al., 2005).
- DDx recall counts the truth as found when it is the final prediction or one of the listed
  differentials.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skinr1_jax.taxonomy import UNKNOWN, Taxonomy


def _ids(values: Sequence[int] | np.ndarray, name: str, n_nodes: int, allow_unknown: bool) -> np.ndarray:
    arr = np.asarray(values, np.int64).reshape(-1)
    bad = (arr >= n_nodes) | ((arr < 0) & ~((arr == UNKNOWN) & allow_unknown))
    if bad.any():
        raise ValueError(f"{name} has node ids outside the taxonomy ({n_nodes} nodes): {arr[bad][:5].tolist()}")
    return arr


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"per-example inputs differ in length: {lengths}")
    return next(iter(lengths.values()))


def option_accuracy(pred_option: Sequence[int] | np.ndarray, answer: Sequence[int] | np.ndarray) -> float:
    """Share of questions whose predicted option index equals the answer (-1 = unparsable, wrong)."""
    pred = np.asarray(pred_option, np.int64).reshape(-1)
    ans = np.asarray(answer, np.int64).reshape(-1)
    n = _same_length(pred_option=pred, answer=ans)
    return float(np.mean(pred == ans)) if n else 0.0


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% at z=1.96) of a share `accuracy` of `n` questions: unlike
    the normal approximation it stays inside [0, 1] and is honest near 0 and 1 and at small n."""
    if n <= 0:
        return float("nan"), float("nan")
    p = float(accuracy)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def unknown_distance(taxonomy: Taxonomy) -> int:
    """The tree distance charged for an UNKNOWN prediction: the tree's diameter."""
    return int(taxonomy.distance_matrix().max())


def _ancestor_at(taxonomy: Taxonomy, nodes: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Ancestor of each node at the given depth; UNKNOWN when unknown or shallower than that."""
    out = np.full(len(nodes), UNKNOWN, np.int64)
    for j, (n, k) in enumerate(zip(nodes.tolist(), levels.tolist())):
        if n != UNKNOWN and taxonomy.depth(n) >= k:
            out[j] = taxonomy.path(n)[k - 1]
    return out


def level_accuracy(taxonomy: Taxonomy, pred: np.ndarray, truth: np.ndarray, level: int) -> float:
    """Accuracy at taxonomy depth `level` (see the module conventions)."""
    if level < 1:
        raise ValueError(f"level must be >= 1, got {level}")
    if (truth == taxonomy.root).any():
        raise ValueError("true_nodes contains the taxonomy root, which is not a diagnosis")
    if not len(truth):
        return 0.0
    depth = np.asarray([taxonomy.depth(t) for t in truth.tolist()], np.int64)
    k = np.minimum(level, depth)
    same = _ancestor_at(taxonomy, pred, k) == _ancestor_at(taxonomy, truth, k)
    return float(np.mean(same & (pred != UNKNOWN)))


def hierarchical_prf(taxonomy: Taxonomy, pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Micro hierarchical (precision, recall, F1) over ancestor sets."""
    inter = n_pred = n_true = 0
    for p, t in zip(pred.tolist(), truth.tolist()):
        anc_t = set(taxonomy.path(t))
        anc_p = set() if p == UNKNOWN else set(taxonomy.path(p))
        inter += len(anc_p & anc_t)
        n_pred += len(anc_p)
        n_true += len(anc_t)
    hp = inter / n_pred if n_pred else 0.0
    hr = inter / n_true if n_true else 0.0
    hf = 2 * hp * hr / (hp + hr) if hp + hr else 0.0
    return hp, hr, hf


def tree_distances(taxonomy: Taxonomy, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """int64[n]: edges between prediction and truth; unknown_distance for UNKNOWN."""
    dist = taxonomy.distance_matrix()
    safe = np.where(pred == UNKNOWN, truth, pred)
    return np.where(pred == UNKNOWN, unknown_distance(taxonomy), dist[safe, truth]).astype(np.int64)


def ddx_recall(pred: np.ndarray, truth: np.ndarray, differentials: Sequence[Sequence[int]]) -> float:
    """Share of examples whose true node is the prediction or among the listed differentials."""
    if len(differentials) != len(truth):
        raise ValueError(f"differentials has {len(differentials)} entries for {len(truth)} examples")
    if not len(truth):
        return 0.0
    hits = [t == p or t in {int(d) for d in ds}
            for p, t, ds in zip(pred.tolist(), truth.tolist(), differentials)]
    return float(np.mean(hits))


def accuracy_by_skin_type(correct: np.ndarray, skin_types: np.ndarray) -> dict[int, float]:
    """Leaf accuracy per Fitzpatrick type 1..6 present; unknown types (-1) are left out."""
    out = {}
    for s in sorted(set(skin_types.tolist())):
        if 1 <= s <= 6:
            out[int(s)] = float(np.mean(correct[skin_types == s]))
        elif s != -1:
            raise ValueError(f"skin type {s} is not a Fitzpatrick type 1..6 or -1 (unknown)")
    return out


def open_ended_metrics(taxonomy: Taxonomy, pred_nodes: Sequence[int] | np.ndarray,
                       true_nodes: Sequence[int] | np.ndarray, *,
                       format_ok: Sequence[bool] | np.ndarray,
                       differentials: Sequence[Sequence[int]] | None = None,
                       skin_types: Sequence[int] | np.ndarray | None = None) -> dict:
    """All open-ended metrics: acc_level1, acc_level2, acc_leaf, mean_tree_distance, hier_precision,
    hier_recall, hier_f1, format_rate, ddx_recall, acc_by_skin_type, max_skin_type_gap."""
    n_nodes = len(taxonomy)
    pred = _ids(pred_nodes, "pred_nodes", n_nodes, allow_unknown=True)
    truth = _ids(true_nodes, "true_nodes", n_nodes, allow_unknown=False)
    fmt = np.asarray(format_ok, bool).reshape(-1)
    skins = (np.full(len(truth), -1, np.int64) if skin_types is None
             else np.asarray(skin_types, np.int64).reshape(-1))
    diffs = [[] for _ in truth] if differentials is None else list(differentials)
    n = _same_length(pred_nodes=pred, true_nodes=truth, format_ok=fmt, skin_types=skins)
    hp, hr, hf = hierarchical_prf(taxonomy, pred, truth)
    correct = pred == truth
    by_skin = accuracy_by_skin_type(correct, skins)
    return {
        "n": n,
        "acc_level1": level_accuracy(taxonomy, pred, truth, 1),
        "acc_level2": level_accuracy(taxonomy, pred, truth, 2),
        "acc_leaf": float(np.mean(correct)) if n else 0.0,
        "mean_tree_distance": float(np.mean(tree_distances(taxonomy, pred, truth))) if n else 0.0,
        "hier_precision": hp,
        "hier_recall": hr,
        "hier_f1": hf,
        "format_rate": float(np.mean(fmt)) if n else 0.0,
        "ddx_recall": ddx_recall(pred, truth, diffs),
        "acc_by_skin_type": by_skin,
        "max_skin_type_gap": max(by_skin.values()) - min(by_skin.values()) if len(by_skin) > 1 else 0.0,
    }


def level_nodes(taxonomy: Taxonomy, level: int) -> list[int]:
    """Node ids at depth `level`, in id order (the confusion-matrix labels)."""
    return [n.id for n in taxonomy.nodes if n.level == level]


def confusion_matrix(taxonomy: Taxonomy, pred_nodes: Sequence[int] | np.ndarray,
                     true_nodes: Sequence[int] | np.ndarray, level: int) -> tuple[list[int], np.ndarray]:
    """(labels, int64[K + 1, K + 1]) at taxonomy depth `level`: rows truth, columns prediction.

    labels are the K nodes at that depth; the last row/column collects nodes with no ancestor
    at that depth (UNKNOWN or shallower).
    """
    n_nodes = len(taxonomy)
    pred = _ids(pred_nodes, "pred_nodes", n_nodes, allow_unknown=True)
    truth = _ids(true_nodes, "true_nodes", n_nodes, allow_unknown=False)
    _same_length(pred_nodes=pred, true_nodes=truth)
    labels = level_nodes(taxonomy, level)
    if not labels:
        raise ValueError(f"the taxonomy has no nodes at level {level}")
    index = {node: j for j, node in enumerate(labels)}
    other = len(labels)
    k = np.full(len(truth), level, np.int64)
    rows = [index.get(a, other) for a in _ancestor_at(taxonomy, truth, k).tolist()]
    cols = [index.get(a, other) for a in _ancestor_at(taxonomy, pred, k).tolist()]
    matrix = np.zeros((other + 1, other + 1), np.int64)
    np.add.at(matrix, (rows, cols), 1)
    return labels, matrix

