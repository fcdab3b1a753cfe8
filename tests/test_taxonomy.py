"""Tests for the disease taxonomy: the shipped tree, the resolver, bad files, tree metrics."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skinr1_jax.knowledge.vocab import MALIGNANCY_CLASSES
from skinr1_jax.taxonomy import (NINE_PARTITION_RENAMES, UNKNOWN, Taxonomy, TaxonomyError,
                                 load_default_taxonomy, normalize)

CSV = Path(__file__).resolve().parents[1].parent / "shared/data/fitzpatrick17k/fitzpatrick17k.csv"


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return load_default_taxonomy()


# ---- the shipped tree ---------------------------------------------------------------------

@pytest.mark.skipif(not CSV.exists(), reason="Fitzpatrick17k CSV not available")
def test_default_tree_matches_fitzpatrick_csv(tax):
    with CSV.open() as f:
        rows = list(csv.DictReader(f))
    triples = {(r["three_partition_label"], r["nine_partition_label"], r["label"]) for r in rows}
    groups = {t[0] for t in triples}
    subgroups = {(t[0], NINE_PARTITION_RENAMES.get(t[1], t[1])) for t in triples}
    labels = {(NINE_PARTITION_RENAMES.get(t[1], t[1]), t[2]) for t in triples}
    assert (len(groups), len(subgroups), len(labels)) == (3, 9, 114)
    assert sorted(tax.name(i) for i in tax.children(tax.root)) == sorted(groups)
    for group, sub in subgroups:
        assert tax.name(tax.parent(tax.id(sub))) == group
        assert not tax.is_extension(tax.id(sub))
    for sub, label in labels:
        i = tax.id(label)                       # exact CSV spelling, misspellings included
        assert tax.name(tax.parent(i)) == sub
        assert tax.depth(i) == 3 and not tax.is_extension(i)
        assert tax.resolve(label) == i
    # Every non-extension node is one of the 3 + 9 + 114 CSV nodes.
    assert len(tax.core_ids()) == 3 + 9 + 114


def test_core_shape_without_csv(tax):
    core = tax.core_ids()
    assert [sum(tax.depth(i) == d for i in core) for d in (1, 2, 3)] == [3, 9, 114]
    assert tax.depth(tax.root) == 0 and tax.path(tax.root) == []


def test_extension_nodes_hang_under_core(tax):
    for i in range(len(tax)):
        if tax.is_extension(i):
            assert tax.depth(i) >= 3
            assert not any(tax.is_extension(j) for j in tax.path(i)[:2])   # CSV group and subgroup


def test_malignancy_classes(tax):
    for n in tax.nodes:
        if n.id != tax.root:
            assert n.malignancy in MALIGNANCY_CLASSES
    m = lambda name: tax.malignancy(tax.id(name))
    assert m("actinic keratosis") == "precancerous_in_situ"
    assert m("bowens disease") == "precancerous_in_situ"
    assert tax.name(tax.parent(tax.id("actinic keratosis"))) == "malignant epidermal"
    assert m("basal cell carcinoma") == m("melanoma") == m("mycosis fungoides") == "malignant"
    assert m("seborrheic keratosis") == m("nevocytic nevus") == m("vascular lesion") == "benign"
    assert m("psoriasis") == m("tuberous sclerosis") == "non_neoplastic"
    assert m("keratoacanthoma") == "malignant"


@pytest.mark.parametrize("labels", [
    ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],                          # HAM10000
    ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"],                                  # PAD-UFES-20
    ["nevus", "melanoma", "basal cell carcinoma", "seborrheic keratosis", "actinic keratosis",
     "solar lentigo", "squamous cell carcinoma", "dermatofibroma", "vascular lesion",
     "melanoma metastasis", "scar"],                                             # BCN20000
    ["basal cell carcinoma", "blue nevus", "clark nevus", "combined nevus", "congenital nevus",
     "dermal nevus", "dermatofibroma", "lentigo", "melanoma (in situ)",
     "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)", "melanoma (more than 1.5 mm)",
     "melanoma metastasis", "melanosis", "recurrent nevus", "reed or spitz nevus",
     "seborrheic keratosis", "vascular lesion"],                                 # derm7pt
    ["acral nevus", "junctional nevus", "compound nevus", "halo nevus", "spitz nevus", "reed nevus",
     "solar lentigo", "lichen planus-like keratosis", "haemangioma", "angiokeratoma",
     "pyogenic granuloma", "sebaceous hyperplasia", "Bowen's disease", "keratoacanthoma",
     "melanoma in situ", "invasive melanoma", "acral melanoma", "lentigo maligna"],  # Derm12345
])
def test_dataset_labels_have_a_home(tax, labels):
    for label in labels:
        assert tax.resolve(label) != UNKNOWN, label


def test_subtypes_sit_under_their_families(tax):
    under = lambda child, parent: tax.is_ancestor(tax.id(parent), tax.id(child))
    assert under("junctional nevus", "nevocytic nevus")
    assert under("reed nevus", "spitz nevus")
    assert under("solar lentigo", "benign keratosis")
    assert under("hemangioma", "vascular lesion")
    assert under("keratoacanthoma", "squamous cell carcinoma")
    assert under("melanoma in situ", "melanoma")
    assert under("bowens disease", "malignant epidermal")
    assert not under("bowens disease", "squamous cell carcinoma")


# ---- resolver ------------------------------------------------------------------------------

def test_resolver_normalisation(tax):
    bowen = tax.id("bowens disease")
    for text in ["Bowen's disease", "bowens disease", "BOWEN DISEASE", "bowen’s  disease", "Bowen's-disease"]:
        assert tax.resolve(text) == bowen, text
    nevus = tax.id("nevocytic nevus")
    for text in ["nevi", "Naevus", "melanocytic naevi", "melanocytic nevus", "NV", "mole"]:
        assert tax.resolve(text) == nevus, text
    assert tax.resolve("Actinic keratoses") == tax.id("actinic keratosis")
    assert tax.resolve("fixed eruption") == tax.id("fixed eruptions")
    assert tax.resolve("Darier's disease") == tax.id("dariers disease")
    assert tax.resolve("Behçet's disease") == tax.id("behcets disease")
    assert tax.resolve("erythema annulare centrifugum") == tax.id("erythema annulare centrifigum")
    assert tax.resolve("haemangiomas") == tax.id("hemangioma")
    assert tax.resolve("  superficial-spreading   melanoma ") == tax.id("superficial spreading melanoma ssm")


def test_resolver_unknown_never_guesses(tax):
    for text in ["miscellaneous", "other", "", "   ", "melanomaa", "basal cell", "nevus of something"]:
        assert tax.resolve(text) == UNKNOWN, text
    assert tax.resolve(None) == UNKNOWN


def test_resolver_ambiguous_is_unknown():
    t = Taxonomy([
        {"name": "root", "parent": None, "malignancy": "benign"},
        {"name": "Bowen's disease", "parent": "root"},
        {"name": "bowens diseases", "parent": "root"},   # same key after normalisation
        {"name": "x", "parent": "root", "synonyms": ["shared name"]},
        {"name": "y", "parent": "root", "synonyms": ["shared-names"]},
    ])
    assert t.resolve("bowen disease") == UNKNOWN
    assert t.resolve("shared name") == UNKNOWN
    assert t.resolve("x") == t.id("x")


def test_normalize():
    assert normalize("Bowen's Disease") == normalize("bowens disease") == normalize("bowen disease")
    assert normalize("naevi") == normalize("nevus")
    assert normalize("psoriasis") == "psoriasis"


# ---- bad files -----------------------------------------------------------------------------

def _write(tmp_path: Path, nodes) -> Path:
    p = tmp_path / "tax.json"
    p.write_text(json.dumps({"nodes": nodes}))
    return p


@pytest.mark.parametrize("nodes, culprit", [
    ([{"name": "r", "parent": None}, {"name": "a", "parent": "b"}, {"name": "b", "parent": "a"}], "cycle"),
    ([{"name": "r", "parent": None}, {"name": "a", "parent": "r"}, {"name": "a", "parent": "r"}], "'a'"),
    ([{"name": "r", "parent": None}, {"name": "a", "parent": "nowhere"}], "'nowhere'"),
    ([{"name": "r", "parent": None}, {"name": "a", "parent": "r", "synonyms": ["R"]}], "'R'"),
    ([{"name": "r", "parent": None}, {"name": "a", "parent": "r", "malignancy": "evil"}], "'evil'"),
    ([{"name": "r", "parent": None}, {"name": "s", "parent": None}], "one root"),
    ([{"name": "r", "parent": None}, {"name": "a", "parent": "r", "colour": 1}], "'a'"),
    ([], "no nodes"),
])
def test_bad_taxonomy_files(tmp_path, nodes, culprit):
    for n in nodes:
        if n["parent"] is None:
            n.setdefault("malignancy", "benign")
    with pytest.raises(TaxonomyError, match=culprit) as e:
        Taxonomy.from_file(_write(tmp_path, nodes))
    assert "tax.json" in str(e.value)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TaxonomyError, match="bad.json"):
        Taxonomy.from_file(bad)
    with pytest.raises(TaxonomyError, match="absent.json"):
        Taxonomy.from_file(tmp_path / "absent.json")
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(TaxonomyError, match="nodes"):
        Taxonomy.from_file(bad)


def test_round_trip_and_subset(tmp_path, tax):
    p = tmp_path / "t.json"
    tax.to_file(p)
    again = Taxonomy.from_file(p)
    assert again.names == tax.names
    np.testing.assert_array_equal(again.distance_matrix(), tax.distance_matrix())

    sub = tax.subset(["melanoma in situ", tax.id("psoriasis")])
    assert sorted(sub.names) == sorted(["skin condition", "malignant", "malignant melanocytic", "melanoma",
                                        "melanoma in situ", "non-neoplastic", "inflammatory", "psoriasis"])
    i, j = sub.id("melanoma in situ"), sub.id("psoriasis")
    assert [sub.name(k) for k in sub.path(i)] == [tax.name(k) for k in tax.path(tax.id("melanoma in situ"))]
    assert sub.distance_matrix()[i, j] == tax.distance_matrix()[tax.id("melanoma in situ"), tax.id("psoriasis")]
    assert sub.resolve("mis") == i and sub.resolve("bcc") == UNKNOWN
    assert sub.malignancy(i) == "malignant"
    with pytest.raises(KeyError, match="not a disease"):
        tax.subset(["not a disease"])


def test_matrices_are_read_only(tax):
    with pytest.raises(ValueError):
        tax.distance_matrix()[0, 0] = 3


# ---- property tests on random trees --------------------------------------------------------

@st.composite
def random_trees(draw):
    n = draw(st.integers(1, 25))
    parents = [None] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    order = draw(st.permutations(range(n)))          # file order need not be topological
    names = [f"n{k}" for k in range(n)]
    specs = [{"name": names[k], "parent": None if parents[k] is None else names[parents[k]]} for k in order]
    specs[order.index(0)]["malignancy"] = "benign"
    return Taxonomy(specs)


def _brute_lca(t: Taxonomy, a: int, b: int) -> int:
    anc_a = [a]
    while t.parent(anc_a[-1]) is not None:
        anc_a.append(t.parent(anc_a[-1]))
    x = b
    while x not in anc_a:
        x = t.parent(x)
    return x


@settings(max_examples=60, deadline=None)
@given(random_trees())
def test_tree_metric_properties(t):
    d, s = t.distance_matrix(), t.shared_depth_matrix()
    n = len(t)
    assert d.dtype == np.int32 and d.shape == (n, n)
    np.testing.assert_array_equal(d, d.T)
    assert (np.diag(d) == 0).all() and (d[~np.eye(n, dtype=bool)] > 0).all()
    # triangle inequality d[i, k] <= d[i, j] + d[j, k] for all i, j, k
    assert (d[:, None, :] <= d[:, :, None] + d[None, :, :]).all()
    for a, b in itertools.product(range(n), repeat=2):
        c = t.lca(a, b)
        assert c == _brute_lca(t, a, b)
        assert s[a, b] == t.depth(c)
        assert d[a, b] == t.depth(a) + t.depth(b) - 2 * t.depth(c)
        assert t.is_ancestor(c, a) and t.is_ancestor(c, b)
    for i in range(n):
        p = t.path(i)
        assert len(p) == t.depth(i) and (not p or p[-1] == i)
        assert all(t.parent(p[k + 1]) == p[k] for k in range(len(p) - 1))
    leaves = set(t.leaves())
    assert all((not t.children(i)) == (i in leaves) for i in range(n))
