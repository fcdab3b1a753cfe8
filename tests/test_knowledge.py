"""Tests for the knowledge base, the concept vocabulary and the DDx graph."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from skinr1_jax.knowledge import (CONCEPTS, SKINCON_COLUMNS, DDxGraph, DDxGraphError, KnowledgeBase,
                                  KnowledgeError, concept_of_feature, load_default_kb)
from skinr1_jax.knowledge.vocab import FEATURE_FIELDS
from skinr1_jax.taxonomy import UNKNOWN, Taxonomy, load_default_taxonomy, normalize

KB_FILE = resources.files("skinr1_jax.knowledge").joinpath("data/knowledge_base.json")


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return load_default_taxonomy()


@pytest.fixture(scope="module")
def kb(tax) -> KnowledgeBase:
    with resources.as_file(KB_FILE) as p:
        return KnowledgeBase.from_file(p, tax, strict=True)   # strict: every name in the file resolves


@pytest.fixture()
def raw() -> dict:
    return json.loads(KB_FILE.read_text())


def _names_of(tax, i):
    return [tax.name(i), *tax.node(i).synonyms]


# ---- the shipped KB ---------------------------------------------------------------------------

def test_every_core_node_has_a_profile(tax, kb):
    core = tax.core_ids()
    assert len(core) == 126
    assert all(i in kb for i in core)


def test_dataset_extension_leaves_have_profiles(tax, kb):
    for name in ["melanocytic nevus", "benign keratosis", "solar lentigo", "vascular lesion",
                 "Bowen's disease", "keratoacanthoma", "melanoma in situ", "lichen planus-like keratosis"]:
        assert tax.resolve(name) in kb, name


def test_feature_words_come_from_vocab(kb):
    for n in kb.node_ids:
        for field, words in kb.profile(n).features().items():
            assert set(words) <= set(FEATURE_FIELDS[field]), (kb.profile(n).name, field)


def test_diseases_have_rules_naming_them_and_differentials(tax, kb):
    for n in kb.node_ids:
        if tax.depth(n) < 3:
            continue
        p = kb.profile(n)
        assert p.morphology, p.name
        assert len(p.differentials) >= 2, p.name
        keys = [normalize(x) for x in _names_of(tax, n)]
        assert any(f" {k} " in f" {normalize(r)} " for r in p.rules for k in keys), (p.name, p.rules)
        assert all(r.rstrip().endswith(".") and r[0].isupper() for r in p.rules), p.name


def test_every_differential_resolves(tax, kb):
    for n in kb.node_ids:
        for other, feature in kb.profile(n).differentials:
            j = tax.resolve(other)
            assert j != UNKNOWN and j != n and feature.strip()


def test_profiles_are_specific_and_siblings_distinguishable(tax, kb):
    for n in kb.node_ids:
        p = kb.profile(n)
        # no disease claims every word of a field
        if tax.depth(n) >= 3:
            for field, words in p.features().items():
                if field != "size":
                    assert len(words) < len(FEATURE_FIELDS[field]), (p.name, field)
        for s in tax.children(tax.parent(n)):
            if s != n and s in kb:
                assert p.features() != kb.profile(s).features(), (p.name, tax.name(s))


def test_concepts_of_profiles(kb):
    assert len(CONCEPTS) == 48 and set(SKINCON_COLUMNS) == set(CONCEPTS)
    psoriasis = kb.profile(kb.taxonomy.id("psoriasis"))
    assert {"plaque", "scale", "erythema"} <= set(psoriasis.concepts)
    for n in kb.node_ids:
        p = kb.profile(n)
        expected = {concept_of_feature(f, w) for f, ws in p.features().items() for w in ws} - {None}
        assert set(p.concepts) == expected


def test_concept_map_covers_lesion_vocabulary():
    # Every primary morphology and surface change other than "smooth" and "shiny" is a concept.
    for field, exempt in [("morphology", set()), ("surface", {"smooth", "shiny"})]:
        for word in FEATURE_FIELDS[field]:
            c = concept_of_feature(field, word)
            assert (c is None) == (word in exempt), word
            assert c is None or c in CONCEPTS
    for field, words in FEATURE_FIELDS.items():
        for w in words:
            assert concept_of_feature(field, w) in (*CONCEPTS, None)
    with pytest.raises(KeyError, match="texture"):
        concept_of_feature("texture", "smooth")
    with pytest.raises(KeyError, match="sparkly"):
        concept_of_feature("colors", "sparkly")


# ---- DDx graph -------------------------------------------------------------------------------

def test_ddx_graph_undirected_without_self_loops(tax, kb):
    g = kb.ddx_graph()
    assert g.edges and all(a < b for a, b in g.edges)
    for a, b in g.edges:
        assert b in g.neighbors(a) and a in g.neighbors(b)
    for n in kb.node_ids:
        for other, _ in kb.profile(n).differentials:
            assert tax.resolve(other) in g.neighbors(n)
    assert g.feature(tax.id("seborrheic keratosis"), tax.id("melanoma"))


def test_ddx_graph_merges_synonyms_and_round_trips(tax, tmp_path):
    g = DDxGraph(tax, [("bcc", "basal cell carcinoma"), ("BCC", "squamous cell carcinoma", "keratin"),
                       ("basal cell carcinoma", "scc"), ("nv", "mel")])
    bcc, scc = tax.id("basal cell carcinoma"), tax.id("squamous cell carcinoma")
    assert g.edges == sorted([(min(bcc, scc), max(bcc, scc)),
                              tuple(sorted((tax.id("nevocytic nevus"), tax.id("melanoma"))))])
    assert g.neighbors(bcc) == [scc] and g.feature(scc, bcc) == "keratin"
    p = tmp_path / "ddx.json"
    g.to_file(p)
    again = DDxGraph.from_file(p, tax)
    assert again.edges == g.edges and again.feature(bcc, scc) == "keratin"
    p.write_text(json.dumps({"edges": [["melanoma", "no such disease"]]}))
    with pytest.raises(DDxGraphError, match="no such disease"):
        DDxGraph.from_file(p, tax)
    p.write_text("{")
    with pytest.raises(DDxGraphError, match="ddx.json"):
        DDxGraph.from_file(p, tax)


# ---- validation of corrupted files ------------------------------------------------------------

def _entry(raw, name):
    return next(e for e in raw["entries"] if e["name"] == name)


@pytest.mark.parametrize("corrupt, match", [
    (lambda r: _entry(r, "psoriasis")["colors"].append("plaid"), r"'psoriasis'.*'colors'.*plaid"),
    (lambda r: _entry(r, "psoriasis").update(smell=["none"]), r"'psoriasis'.*smell"),
    (lambda r: _entry(r, "psoriasis")["differentials"].append(["dragon pox", "scales"]), r"'psoriasis'.*dragon pox"),
    (lambda r: _entry(r, "psoriasis")["differentials"].append(["psoriasis vulgaris", "x"]), r"'psoriasis'.*itself"),
    (lambda r: _entry(r, "psoriasis").update(rules=[]), r"'psoriasis'.*rules"),
    (lambda r: _entry(r, "psoriasis").update(differentials=[["eczema", "x"]]), r"'psoriasis'.*differentials"),
    (lambda r: _entry(r, "psoriasis").pop("sites"), r"'psoriasis'.*sites"),
    (lambda r: r["entries"].remove(_entry(r, "vitiligo")), r"vitiligo"),
    (lambda r: r["entries"].append(dict(_entry(r, "vitiligo"))), r"'vitiligo'.*more than one"),
    (lambda r: r["entries"].append({"name": "unicorn horn", **{f: [] for f in FEATURE_FIELDS}}), r"unicorn horn"),
])
def test_corrupted_kb_raises_naming_node(tmp_path, tax, raw, corrupt, match):
    corrupt(raw)
    p = tmp_path / "kb.json"
    p.write_text(json.dumps(raw))
    with pytest.raises(KnowledgeError, match=match) as e:
        KnowledgeBase.from_file(p, tax)
    assert "kb.json" in str(e.value)


def test_unreadable_kb(tmp_path, tax):
    p = tmp_path / "kb.json"
    p.write_text("not json")
    with pytest.raises(KnowledgeError, match="kb.json"):
        KnowledgeBase.from_file(p, tax)
    with pytest.raises(KnowledgeError, match="missing.json"):
        KnowledgeBase.from_file(tmp_path / "missing.json", tax)


# ---- subsets, merging, export -----------------------------------------------------------------

def test_default_kb_over_a_subset(tax):
    sub = tax.subset(["psoriasis", "eczema", "melanoma"])
    kb = load_default_kb(sub)
    assert set(kb.node_ids) == set(range(len(sub))) - {sub.root}
    pso = kb.profile(sub.id("psoriasis"))
    assert all(sub.resolve(d) != UNKNOWN for d, _ in pso.differentials)
    assert kb.ddx_graph().neighbors(sub.id("psoriasis")) == [sub.id("eczema")]


def test_merge_and_round_trip(tmp_path, tax, kb):
    grown = kb.merge([{"name": "Psoriasis vulgaris", "rules": ["Silvery scale on the knees indicates psoriasis."],
                       "differentials": [["lichen planus", "violaceous flat-topped papules"]]},
                      {"name": "herpes zoster", "rules": ["Grouped vesicles in a dermatome indicate herpes zoster."],
                       "morphology": ["vesicle"], "configuration": ["grouped", "dermatomal"]}])
    pso = tax.id("psoriasis")
    assert grown.rules(pso)[:-1] == kb.rules(pso) and "knees" in grown.rules(pso)[-1]
    assert tax.id("lichen planus") in grown.ddx_graph().neighbors(pso)
    assert grown.profile(tax.id("herpes zoster")).concepts == ("vesicle",)
    with pytest.raises(KnowledgeError, match="'psoriasis'.*tartan"):
        kb.merge([{"name": "psoriasis", "colors": ["tartan"]}])
    p = tmp_path / "kb.json"
    grown.to_file(p)
    again = KnowledgeBase.from_file(p, tax, complete=False)
    assert again.profile(pso) == grown.profile(pso)
    with pytest.raises(KnowledgeError, match="herpes zoster.*differentials"):
        KnowledgeBase.from_file(p, tax)
    with pytest.raises(KeyError, match="ink spot lentigo"):
        kb.profile(tax.id("ink spot lentigo"))
