"""Trajectory generator and verifier, on a small hand-made tree/KB and on the shipped defaults."""

from __future__ import annotations

import re

import pytest
from ml_collections import ConfigDict

from skinr1_jax.knowledge import KnowledgeBase
from skinr1_jax.taxonomy import Taxonomy
from skinr1_jax.trajectories import (ALL_TYPES, DDX_TYPES, format_summary, generate_trajectories,
                                     sft_prompt, split_response, summarize, verify)

TREE = [
    ("skin condition", None, None),
    ("benign", "skin condition", "benign"),
    ("malignant", "skin condition", "malignant"),
    ("non-neoplastic", "skin condition", "non_neoplastic"),
    ("benign epidermal", "benign", None),
    ("malignant epidermal", "malignant", None),
    ("inflammatory", "non-neoplastic", None),
    ("seborrheic keratosis", "benign epidermal", None),
    ("viral wart", "benign epidermal", None),
    ("actinic keratosis", "malignant epidermal", "precancerous_in_situ"),
    ("basal cell carcinoma", "malignant epidermal", None),
    ("psoriasis", "inflammatory", None),
    ("eczema", "inflammatory", None),
]
# name: (morphology, colors, surface, rule, differentials)
DISEASES = {
    "seborrheic keratosis": (["papule", "plaque"], ["brown"], ["verrucous", "keratotic"],
                             "A waxy, stuck-on brown papule with a verrucous surface indicates seborrheic keratosis.",
                             [["viral wart", "warts lack the stuck-on look"],
                              ["actinic keratosis", "actinic keratosis is pink and gritty"]]),
    "viral wart": (["papule"], ["skin-colored"], ["verrucous"],
                   "A rough skin-coloured papule with black dots indicates a viral wart.",
                   [["seborrheic keratosis", "seborrheic keratosis is brown and waxy"],
                    ["basal cell carcinoma", "basal cell carcinoma is pearly"]]),
    "actinic keratosis": (["macule", "papule"], ["pink", "red"], ["scale"],
                          "A rough, scaly pink macule on sun-damaged skin indicates actinic keratosis.",
                          [["seborrheic keratosis", "seborrheic keratosis looks stuck on"],
                           ["basal cell carcinoma", "basal cell carcinoma is pearly"]]),
    "basal cell carcinoma": (["papule", "nodule"], ["pink", "translucent"], ["pearly", "telangiectasia"],
                             "A pearly papule with rolled border and telangiectasia indicates basal cell carcinoma.",
                             [["actinic keratosis", "actinic keratosis is flat and scaly"],
                              ["viral wart", "warts are rough"]]),
    "psoriasis": (["plaque"], ["red", "white"], ["scale"],
                  "Well-demarcated red plaques with silvery scale on the elbows indicate psoriasis.",
                  [["eczema", "eczema is ill-defined and itchy"],
                   ["actinic keratosis", "actinic keratosis is small and on sun-exposed skin"]]),
    "eczema": (["patch", "plaque"], ["red"], ["excoriation", "crust"],
               "Ill-defined itchy red patches with excoriation in the flexures indicate eczema.",
               [["psoriasis", "psoriasis is sharply demarcated with thick scale"],
                ["seborrheic keratosis", "seborrheic keratosis is a discrete growth"]]),
}
OBSERVED = {
    "seborrheic keratosis": ["papule", "hyperpigmentation", "warty"],
    "viral wart": ["papule", "warty"],
    "actinic keratosis": ["macule", "scale", "erythema"],
    "basal cell carcinoma": ["nodule", "translucent", "telangiectasia"],
    "psoriasis": ["plaque", "scale", "erythema"],
    "eczema": ["patch", "erythema", "excoriation", "crust"],
}


def _entry(name: str) -> dict:
    empty = dict(morphology=[], colors=[], surface=[], border=[], configuration=[], size=[],
                 elevation=[], sites=[], distinguishing=[], differentials=[], rules=[])
    if name not in DISEASES:
        return {"name": name, **empty}
    morphology, colors, surface, rule, diffs = DISEASES[name]
    return {"name": name, **empty, "morphology": morphology, "colors": colors, "surface": surface,
            "rules": [rule], "differentials": diffs}


@pytest.fixture(scope="module")
def small():
    tax = Taxonomy([{"name": n, "parent": p, **({"malignancy": m} if m else {})} for n, p, m in TREE])
    kb = KnowledgeBase(tax, [_entry(n) for n, _, _ in TREE[1:]])
    examples = [{"id": f"{name}-{k}", "node": tax.id(name), "concepts": OBSERVED[name] if k < 2 else []}
                for name in DISEASES for k in range(3)]
    return tax, kb, examples


def _cfg(**overrides) -> ConfigDict:
    cfg = ConfigDict(dict(types=ALL_TYPES, per_diagnosis_per_type=4, max_per_type=1000,
                          think_tag="thinking", diagnosis_tag="diagnosis", final_tag="final diagnosis",
                          llm=ConfigDict(dict(enabled=False, url="", model="", api_key_env="",
                                              temperature=0.2, max_tokens=120, timeout_s=5.0))))
    cfg.update(overrides)
    return cfg


def _thinking(traj: dict) -> str:
    return split_response(traj["response"], "thinking", "diagnosis")[0]


def _final(traj: dict) -> str:
    return split_response(traj["response"], "thinking", "diagnosis")[1]


def test_every_type_produced_verified_and_prompted(small):
    tax, kb, examples = small
    cfg = _cfg()
    result = generate_trajectories(examples, tax, kb, cfg, seed=0)
    assert result.rejected == {}
    ddx = kb.ddx_graph()
    for kind in ALL_TYPES:
        of_kind = [t for t in result.trajectories if t["type"] == kind]
        assert len(of_kind) == result.counts[kind] > 0
        for t in of_kind:
            assert verify(t, tax, ddx, cfg) == []
            assert t["prompt"] == sft_prompt(kind, cfg)
            assert "<" not in t["prompt"].replace("<thinking>", "").replace("</thinking>", "").replace(
                "<diagnosis>", "").replace("</diagnosis>", "")
            assert t["label"] == tax.name(t["node"])


def test_per_diagnosis_count_and_cap(small):
    tax, kb, examples = small
    result = generate_trajectories(examples, tax, kb, _cfg(types=("basic", "ddx_keep"), per_diagnosis_per_type=5), 1)
    assert result.counts == {"basic": 5 * len(DISEASES), "ddx_keep": 5 * len(DISEASES)}
    capped = generate_trajectories(examples, tax, kb, _cfg(types=("basic",), per_diagnosis_per_type=5,
                                                           max_per_type=8), 1)
    assert capped.counts == {"basic": 8}
    # Round robin keeps the capped set spread over diagnoses.
    assert len({t["label"] for t in capped.trajectories}) == len(DISEASES)


def test_deterministic_per_seed_and_varied_across_seeds(small):
    tax, kb, examples = small
    a = generate_trajectories(examples, tax, kb, _cfg(), seed=3)
    b = generate_trajectories(list(reversed(examples)), tax, kb, _cfg(), seed=3)
    c = generate_trajectories(examples, tax, kb, _cfg(), seed=4)
    assert a.trajectories == b.trajectories
    responses_a = [t["response"] for t in a.trajectories]
    responses_c = [t["response"] for t in c.trajectories]
    assert sum(x != y for x, y in zip(responses_a, responses_c)) > len(responses_a) // 2
    # Several wordings per step: the opening sentences of one diagnosis's trajectories differ.
    openings = {_thinking(t).split(".")[0].split(" a ")[0] for t in a.trajectories + c.trajectories
                if t["type"] == "basic" and t["label"] == "psoriasis" and "-2" not in t["example_id"]}
    assert len(openings) >= 2


def test_thinking_starts_from_observed_concepts(small):
    tax, kb, _ = small
    ex = [{"id": "p", "node": tax.id("psoriasis"), "concepts": ["plaque", "scale", "erythema"]}]
    result = generate_trajectories(ex, tax, kb, _cfg(per_diagnosis_per_type=3), seed=0)
    for t in result.trajectories:
        first = _thinking(t).split(". ")[0].lower()
        assert all(w in first for w in ("plaque", "scaly", "red")), first
        assert "psoriasis" not in first   # observations first, diagnosis later
    bare = [{"id": "q", "node": tax.id("psoriasis"), "concepts": []}]
    result = generate_trajectories(bare, tax, kb, _cfg(per_diagnosis_per_type=3), seed=0)
    assert result.counts["hierarchy_walk"] == 0
    assert result.skipped == {"hierarchy_walk: no observed concepts to walk from": 3}
    for t in result.trajectories:
        assert "image" not in _thinking(t).split(". ")[0].lower()


def test_keep_and_switch_semantics(small):
    tax, kb, examples = small
    ddx = kb.ddx_graph()
    result = generate_trajectories(examples, tax, kb, _cfg(types=DDX_TYPES), seed=0)
    for t in result.trajectories:
        (other,) = t["differentials"]
        thinking = _thinking(t)
        label = t["label"]
        final_sentence = thinking.rstrip(".").split(". ")[-1]
        assert label in final_sentence.lower()
        assert _final(t).startswith(f"{label}. ")
        # Where the label's name first appears (after the observation sentence) tells who led.
        after_rule = thinking.lower().split(". ", 1)[1] if t["example_id"][-1] != "2" else thinking.lower()
        first_label = re.search(re.escape(label), after_rule).start()
        first_other = re.search(re.escape(other), after_rule).start()
        if t["type"].endswith("_switch"):
            assert first_other < first_label, thinking
        else:
            assert first_label < first_other, thinking
        neighbour = tax.id(other) in ddx.neighbors(t["node"])
        assert neighbour == t["type"].startswith("ddx_")


def test_hierarchy_walk_names_the_path_and_3_to_5_candidates(small):
    tax, kb, examples = small
    result = generate_trajectories(examples, tax, kb, _cfg(types=("hierarchy_walk",)), seed=0)
    assert result.counts["hierarchy_walk"] > 0
    for t in result.trajectories:
        thinking = _thinking(t)
        group, subgroup = (tax.name(i) for i in tax.path(t["node"])[:2])
        assert group in thinking and subgroup in thinking
        assert 2 <= len(t["differentials"]) <= 4
        items = re.findall(r"([a-z][a-z '-]*?) \(for: ([^;]*); against: ([^)]*)\)", thinking)
        assert sorted(name for name, _, _ in items) == sorted(t["differentials"] + [t["label"]])
        # Only the right diagnosis may have nothing against it.
        assert all(con != "nothing" for name, _, con in items if name != t["label"])


def test_labels_without_knowledge_are_skipped_not_guessed(small):
    tax, kb, examples = small
    no_profile = [{"id": "root", "node": tax.root, "concepts": ["papule"]}]
    result = generate_trajectories(no_profile, tax, kb, _cfg(per_diagnosis_per_type=1), seed=0)
    assert result.trajectories == []
    assert result.skipped == {f"{k}: label has no knowledge-base profile": 1 for k in ALL_TYPES}
    group = [{"id": "g", "node": tax.id("benign epidermal"), "concepts": ["papule"]}]
    result = generate_trajectories(group, tax, kb, _cfg(types=("basic",), per_diagnosis_per_type=1), seed=0)
    assert result.skipped == {"basic: no rule for the label": 1}


def test_final_answer_carries_the_hierarchy(small):
    tax, kb, examples = small
    result = generate_trajectories(examples, tax, kb, _cfg(types=("basic",)), seed=0)
    ak = next(t for t in result.trajectories if t["label"] == "actinic keratosis")
    assert _final(ak) == ("actinic keratosis. Actinic keratosis is a subtype of malignant epidermal, "
                          "within malignant, and is generally precancerous (in situ).")
    ps = next(t for t in result.trajectories if t["label"] == "psoriasis")
    assert _final(ps).endswith("is a subtype of inflammatory, within non-neoplastic, and is generally non-neoplastic.")


@pytest.fixture(scope="module")
def good(small):
    tax, kb, examples = small
    result = generate_trajectories(examples, tax, kb, _cfg(), seed=0)
    by_type = {t["type"]: t for t in result.trajectories if t["label"] == "seborrheic keratosis"}
    return tax, kb.ddx_graph(), by_type


def _with_response(traj: dict, response: str) -> dict:
    return {**traj, "response": response}


@pytest.mark.parametrize("edit, code", [
    (lambda r: r.replace("seborrheic keratosis. Seborrheic keratosis", "viral wart. Viral wart"), "diagnosis"),
    (lambda r: r.replace("subtype of benign epidermal", "subtype of inflammatory"), "ancestors"),
    (lambda r: r.replace(", within benign,", ","), "ancestors"),
    (lambda r: r.replace("generally benign", "generally malignant"), "malignancy"),
    (lambda r: r.replace("</thinking>", ""), "tags"),
    (lambda r: r.replace("</diagnosis>", "</diagnosis><diagnosis>x</diagnosis>"), "tags"),
    (lambda r: "<diagnosis>x</diagnosis>" + r, "tags"),
    (lambda r: r.replace("<thinking>", "<think>").replace("</thinking>", "</think>"), "tags"),
    (lambda r: r.replace(", and is generally", " and is usually"), "hierarchy"),
])
def test_verifier_rejects_broken_responses(good, edit, code):
    tax, ddx, by_type = good
    cfg = _cfg()
    for traj in by_type.values():
        broken = _with_response(traj, edit(traj["response"]))
        assert broken["response"] != traj["response"]
        problems = verify(broken, tax, ddx, cfg)
        assert any(p.startswith(code + ":") for p in problems), problems


def test_verifier_rejects_bad_differentials_and_labels(good):
    tax, ddx, by_type = good
    cfg = _cfg()
    keep = by_type["ddx_keep"]
    assert verify(keep, tax, ddx, cfg) == []
    unknown = {**keep, "differentials": ["made-up dermatosis"],
               "response": keep["response"].replace(keep["differentials"][0], "made-up dermatosis")}
    assert any(p.startswith("differential:") for p in verify(unknown, tax, ddx, cfg))
    unnamed = {**keep, "differentials": ["eczema"]}
    assert any("not named" in p for p in verify(unnamed, tax, ddx, cfg))
    rand = by_type["random_keep"]
    as_ddx = {**rand, "type": "ddx_keep"}
    assert any(p.startswith("ddx_edge:") for p in verify(as_ddx, tax, ddx, cfg))
    wrong_label = {**keep, "label": "viral wart"}
    assert any(p.startswith("label:") for p in verify(wrong_label, tax, ddx, cfg))
    assert any(p.startswith("type:") for p in verify({**keep, "type": "bogus"}, tax, ddx, cfg))
    # The same response with other tag names is broken under that config.
    assert any(p.startswith("tags:") for p in verify(keep, tax, ddx, _cfg(think_tag="think")))


def test_custom_tags_are_used(small):
    tax, kb, examples = small
    cfg = _cfg(types=("basic", "ddx_switch"), think_tag="reasoning", diagnosis_tag="answer")
    result = generate_trajectories(examples, tax, kb, cfg, seed=0)
    assert result.trajectories and result.rejected == {}
    for t in result.trajectories:
        assert t["response"].startswith("<reasoning>") and t["response"].endswith("</answer>")
        assert "<reasoning>" in t["prompt"] and "<answer>" in t["prompt"]


def test_bad_inputs_name_the_culprit(small):
    tax, kb, examples = small
    with pytest.raises(ValueError, match="bogus"):
        generate_trajectories(examples, tax, kb, _cfg(types=("basic", "bogus")), seed=0)
    with pytest.raises(ValueError, match="shiny-ness"):
        generate_trajectories([{"id": "x", "node": 7, "concepts": ["shiny-ness"]}], tax, kb, _cfg(), seed=0)
    with pytest.raises(ValueError, match="'x'.*node"):
        generate_trajectories([{"id": "x", "node": 999, "concepts": []}], tax, kb, _cfg(), seed=0)
    with pytest.raises(ValueError, match="concepts"):
        generate_trajectories([{"id": "x", "node": 7}], tax, kb, _cfg(), seed=0)


def test_summary_counts_and_lengths(small):
    tax, kb, examples = small
    result = generate_trajectories(examples, tax, kb, _cfg(), seed=0)
    words = summarize(result)
    assert words["total"] == len(result.trajectories) == sum(words["counts"].values())
    basic = [len(t["response"].split()) for t in result.trajectories if t["type"] == "basic"]
    assert words["response_length"]["basic"]["max"] == max(basic)
    chars = summarize(result, tokenize=lambda s: list(s))
    assert chars["unit"] == "tokens"
    assert chars["response_length"]["basic"]["min"] == min(
        len(t["response"]) for t in result.trajectories if t["type"] == "basic")
    text = format_summary(words)
    assert "ddx_switch" in text and "rejected: none" in text


def test_real_default_taxonomy_and_kb():
    from skinr1_jax.knowledge import load_default_kb
    from skinr1_jax.taxonomy import load_default_taxonomy
    tax = load_default_taxonomy()
    kb = load_default_kb(tax)
    diseases = [i for i in kb.node_ids if tax.depth(i) >= 3][::3]
    examples = []
    for i in diseases:
        concepts = list(kb.profile(i).concepts)
        examples.append({"id": f"{i}-a", "node": i, "concepts": concepts[: max(1, len(concepts) // 2)]})
        examples.append({"id": f"{i}-b", "node": i, "concepts": []})
    cfg = _cfg(per_diagnosis_per_type=2)
    result = generate_trajectories(examples, tax, kb, cfg, seed=0)
    assert result.rejected == {}
    ddx = kb.ddx_graph()
    for kind in ALL_TYPES:
        assert result.counts[kind] >= len(diseases)
    lengths = summarize(result)["response_length"]
    assert lengths["basic"]["max"] <= 100
    assert all(lengths[k]["max"] <= 170 for k in DDX_TYPES)
    for t in result.trajectories[::7]:
        assert verify(t, tax, ddx, cfg) == []
