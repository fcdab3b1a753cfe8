"""Metrics against values worked out by hand on a small tree (ids in comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skinr1_jax.eval import metrics
from skinr1_jax.taxonomy import UNKNOWN, Taxonomy

SPECS = [
    {"name": "root", "parent": None, "malignancy": "benign"},            # 0
    {"name": "neoplasm", "parent": "root"},                              # 1  depth 1
    {"name": "melanocytic", "parent": "neoplasm"},                       # 2  depth 2
    {"name": "nevus", "parent": "melanocytic"},                          # 3  depth 3
    {"name": "melanoma", "parent": "melanocytic"},                       # 4  depth 3
    {"name": "nodular melanoma", "parent": "melanoma"},                  # 5  depth 4
    {"name": "keratinocytic", "parent": "neoplasm"},                     # 6  depth 2
    {"name": "seborrheic keratosis", "parent": "keratinocytic"},         # 7  depth 3
    {"name": "actinic keratosis", "parent": "keratinocytic"},            # 8
    {"name": "basal cell carcinoma", "parent": "keratinocytic"},         # 9
    {"name": "inflammatory", "parent": "root", "malignancy": "non_neoplastic"},  # 10 depth 1
    {"name": "eczematous", "parent": "inflammatory"},                    # 11 depth 2
    {"name": "atopic dermatitis", "parent": "eczematous"},               # 12 depth 3
    {"name": "psoriasiform", "parent": "inflammatory"},                  # 13 depth 2
    {"name": "psoriasis", "parent": "psoriasiform"},                     # 14 depth 3
]

# (pred, truth): exact; sibling-of-parent; other subgroup; unknown; too shallow; truth at depth 2.
PRED = [3, 4, 7, UNKNOWN, 10, 3]
TRUTH = [3, 5, 3, 14, 12, 6]
FORMAT = [True, True, False, False, True, True]
DIFFS = [[], [5], [4], [14], [], [6]]
SKIN = [1, 1, 2, 2, -1, 3]


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return Taxonomy(SPECS)


def test_open_ended_metrics_by_hand(tax: Taxonomy) -> None:
    m = metrics.open_ended_metrics(tax, PRED, TRUTH, format_ok=FORMAT, differentials=DIFFS, skin_types=SKIN)
    assert m["n"] == 6
    assert m["acc_leaf"] == pytest.approx(1 / 6)
    assert m["acc_level1"] == pytest.approx(5 / 6)
    assert m["acc_level2"] == pytest.approx(2 / 6)
    # Distances 0, 1, 4, diameter (nodular melanoma .. atopic dermatitis = 7), 2, 3.
    assert metrics.unknown_distance(tax) == 7
    assert m["mean_tree_distance"] == pytest.approx(17 / 6)
    # Ancestor sets: intersections 3+3+1+0+1+1, predicted 3+3+3+0+1+3, true 3+4+3+3+3+2.
    assert m["hier_precision"] == pytest.approx(9 / 13)
    assert m["hier_recall"] == pytest.approx(9 / 18)
    assert m["hier_f1"] == pytest.approx(18 / 31)
    assert m["format_rate"] == pytest.approx(4 / 6)
    assert m["ddx_recall"] == pytest.approx(4 / 6)
    assert m["acc_by_skin_type"] == {1: 0.5, 2: 0.0, 3: 0.0}
    assert m["max_skin_type_gap"] == pytest.approx(0.5)


def test_metrics_finite_and_in_range_on_random_predictions(tax: Taxonomy) -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(1, len(tax), 200)
    pred = np.where(rng.random(200) < 0.2, UNKNOWN, rng.integers(1, len(tax), 200))
    m = metrics.open_ended_metrics(tax, pred, truth, format_ok=rng.random(200) < 0.5,
                                   differentials=[list(rng.integers(1, len(tax), 3)) for _ in range(200)],
                                   skin_types=rng.integers(1, 7, 200))
    for key in ("acc_level1", "acc_level2", "acc_leaf", "hier_f1", "hier_precision", "hier_recall",
                "format_rate", "ddx_recall", "max_skin_type_gap"):
        assert math.isfinite(m[key]) and 0.0 <= m[key] <= 1.0, key
    assert 0.0 <= m["mean_tree_distance"] <= metrics.unknown_distance(tax)
    assert m["acc_level1"] >= m["acc_level2"] >= m["acc_leaf"]
    assert set(m["acc_by_skin_type"]) == {1, 2, 3, 4, 5, 6}


def test_perfect_and_empty_predictions(tax: Taxonomy) -> None:
    truth = [3, 5, 12, 6]
    m = metrics.open_ended_metrics(tax, truth, truth, format_ok=[True] * 4)
    assert m["acc_leaf"] == m["acc_level1"] == m["acc_level2"] == m["hier_f1"] == m["ddx_recall"] == 1.0
    assert m["mean_tree_distance"] == 0.0 and m["acc_by_skin_type"] == {} and m["max_skin_type_gap"] == 0.0
    e = metrics.open_ended_metrics(tax, [], [], format_ok=[])
    assert e["n"] == 0 and all(math.isfinite(v) for v in e.values() if isinstance(v, float))
    u = metrics.open_ended_metrics(tax, [UNKNOWN] * 2, [3, 14], format_ok=[False] * 2)
    assert u["hier_f1"] == 0.0 and u["mean_tree_distance"] == 7.0


def test_bad_inputs_are_named(tax: Taxonomy) -> None:
    with pytest.raises(ValueError, match="pred_nodes.*99"):
        metrics.open_ended_metrics(tax, [99], [3], format_ok=[True])
    with pytest.raises(ValueError, match="true_nodes"):
        metrics.open_ended_metrics(tax, [3], [UNKNOWN], format_ok=[True])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.open_ended_metrics(tax, [3, 3], [3], format_ok=[True])
    with pytest.raises(ValueError, match="root"):
        metrics.open_ended_metrics(tax, [3], [0], format_ok=[True])
    with pytest.raises(ValueError, match="skin type 9"):
        metrics.open_ended_metrics(tax, [3], [3], format_ok=[True], skin_types=[9])


def test_option_accuracy() -> None:
    assert metrics.option_accuracy([0, 1, -1, 2], [0, 2, 1, 2]) == 0.5
    assert metrics.option_accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        metrics.option_accuracy([0], [0, 1])


def test_confusion_matrix_levels(tax: Taxonomy) -> None:
    labels, m1 = metrics.confusion_matrix(tax, PRED, TRUTH, level=1)
    assert labels == [1, 10]
    np.testing.assert_array_equal(m1, [[4, 0, 0], [0, 1, 1], [0, 0, 0]])
    labels, m2 = metrics.confusion_matrix(tax, PRED, TRUTH, level=2)
    assert labels == [2, 6, 11, 13]
    expected = np.zeros((5, 5), int)
    expected[0, 0], expected[0, 1], expected[1, 0], expected[2, 4], expected[3, 4] = 2, 1, 1, 1, 1
    np.testing.assert_array_equal(m2, expected)
    assert m2.sum() == len(TRUTH)
    with pytest.raises(ValueError, match="level 9"):
        metrics.confusion_matrix(tax, PRED, TRUTH, level=9)


@pytest.mark.parametrize("k,n", [(87, 288), (0, 12), (12, 12), (1, 3), (144, 288)])
def test_wilson_interval_matches_scipy(k: int, n: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = metrics.wilson_interval(k / n, n)
    assert lo == pytest.approx(ref.low, abs=1e-4) and hi == pytest.approx(ref.high, abs=1e-4)
    assert lo <= k / n <= hi
    assert all(math.isnan(x) for x in metrics.wilson_interval(0.5, 0))
