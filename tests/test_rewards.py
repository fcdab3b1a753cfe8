"""Host parsing of responses and the vectorised device rewards vs a numpy transcription."""

import jax.numpy as jnp
import numpy as np
import pytest

from skinr1_jax.knowledge.vocab import MALIGNANCY_CLASSES
from skinr1_jax.train import rewards

GOOD = "<thinking>red scaly plaque</thinking>\n<final diagnosis>B: psoriasis, benign</final diagnosis>"


def test_format_requires_the_whole_response():
    p = rewards.ResponseParser()
    assert p.format_ok(GOOD) == 1
    assert p.format_ok("  <THINKING>x</thinking><Final Diagnosis>A</final diagnosis>  ") == 1
    assert p.format_ok("preamble " + GOOD) == 0
    assert p.format_ok(GOOD + " trailing") == 0
    assert p.format_ok("<thinking>x</thinking>") == 0
    assert p.format_ok("<final diagnosis>A</final diagnosis><thinking>x</thinking>") == 0
    # tag names come from config
    q = rewards.ResponseParser(think_tag="think", final_tag="answer")
    assert q.format_ok("<think>a</think><answer>C</answer>") == 1
    assert q.format_ok(GOOD) == 0


def test_option_and_malignancy_parsing_like_the_paper():
    texts = [
        GOOD,                                                           # B, benign
        "<final diagnosis>(c) melanoma - Malignant</final diagnosis>",  # C, malignant
        "<final diagnosis> d</final diagnosis>",                         # D
        "<final diagnosis>Actinic keratosis</final diagnosis>",          # paper: first letter A
        "<final diagnosis>E: something</final diagnosis>",               # beyond 4 options
        "no tags at all: A benign",                                      # no final field
        "<final diagnosis>123 precancerous in situ</final diagnosis>",   # no letter
        "<final diagnosis>B non-neoplastic</final diagnosis>",
    ]
    out = rewards.parse_responses(texts)
    np.testing.assert_array_equal(out["option"], [1, 2, 3, 0, -1, -1, -1, 1])
    m = {c: i for i, c in enumerate(MALIGNANCY_CLASSES)}
    np.testing.assert_array_equal(
        out["malignancy_pred"],
        [m["benign"], m["malignant"], -1, -1, -1, -1, m["precancerous_in_situ"],
         m["non_neoplastic"]])
    assert out["format_ok"].dtype == np.int32 and out["format_ok"].shape == (8,)


def test_malignancy_read_only_among_the_offered_classes():
    from skinr1_jax.data import prompts

    m = {c: i for i, c in enumerate(MALIGNANCY_CLASSES)}
    paper = rewards.ResponseParser(malignancy_classes=prompts.PAPER_MALIGNANCY_CLASSES)
    every = rewards.ResponseParser(malignancy_classes=MALIGNANCY_CLASSES)
    # The paper's prompt offers benign / malignant / precancerous in situ only: "non-neoplastic"
    # is no answer to it, and an offered word elsewhere in the field still is.
    assert paper.malignancy("B non-neoplastic") == -1
    assert every.malignancy("B non-neoplastic") == m["non_neoplastic"]
    assert paper.malignancy("A: benign epidermal, non-neoplastic") == m["benign"]
    assert every.malignancy("A: benign epidermal, non-neoplastic") == m["non_neoplastic"]
    assert paper.malignancy("C precancerous in situ") == m["precancerous_in_situ"]
    # "non-malignant" is not the class "malignant"
    assert every.malignancy("D non-malignant") == -1
    assert every.malignancy("D non-malignant, benign") == m["benign"]
    # the prompt and the parser agree on the words: every offered class, as the prompt writes it,
    # is read back as itself
    for classes in (prompts.PAPER_MALIGNANCY_CLASSES, MALIGNANCY_CLASSES):
        p = rewards.ResponseParser(malignancy_classes=classes)
        for c in classes:
            assert p.malignancy(f"A. {prompts.MALIGNANCY_TEXT[c]}") == m[c], (classes, c)
    out = rewards.parse_responses(["<final diagnosis>B non-neoplastic</final diagnosis>"],
                                  malignancy_classes=("benign", "malignant"))
    assert out["malignancy_pred"].tolist() == [-1]
    with pytest.raises(ValueError, match="malignancy_classes"):
        rewards.ResponseParser(malignancy_classes=("benign", "cancer"))


def test_strict_parsing_rejects_multi_answers_and_free_text():
    p = rewards.ResponseParser(strict=True)
    assert p.option("B: psoriasis") == 1
    assert p.option("A or B") == -1
    assert p.option("Actinic keratosis") == -1
    assert p.option("(C)") == 2


def test_resolver_gives_nodes_and_unknown():
    names = {"psoriasis": 5, "melanoma": 9}
    out = rewards.parse_responses(
        ["<thinking>x</thinking><final diagnosis> Melanoma </final diagnosis>",
         "<thinking>x</thinking><final diagnosis>tinea</final diagnosis>", "garbage"],
        resolver=lambda t: names.get(t.lower(), -1))
    np.testing.assert_array_equal(out["node_pred"], [9, -1, -1])


def np_rewards(b, weights, variant, credit=None):
    fw, ow, mw = weights
    out = []
    for i in range(len(b["format_ok"])):
        o = b["option"][i]
        score = b["option_scores"][i][o] if 0 <= o < b["option_scores"].shape[1] else 0.0
        if variant == "flat" and score != 0.75:
            score = 0.0
        ans = score
        if credit is not None and b["is_open"][i]:
            p, t = b["node_pred"][i], b["node_true"][i]
            c = credit[t, p] if p >= 0 else 0.0
            if variant == "flat":
                c = float(c == 1.0)
            ans = 0.75 * c
        mal = float(b["malignancy_true"][i] >= 0 and b["malignancy_pred"][i] == b["malignancy_true"][i])
        out.append(fw * b["format_ok"][i] + ow * ans + mw * mal)
    return np.array(out)


def make_batch():
    return {
        "format_ok": np.array([1, 1, 0, 1, 1, 0], np.int32),
        "option": np.array([0, 1, 2, -1, 3, 1], np.int32),
        "option_scores": np.array([[0.75, 0.0, 0.25, 0.0], [0.0, 0.5, 0.0, 0.75],
                                   [0.25, 0.5, 0.75, 0.0], [0.75, 0, 0, 0],
                                   [0, 0, 0.375, 0.75], [0.0, 0.0, 0.0, 0.75]], np.float32),
        "malignancy_pred": np.array([0, 2, -1, 2, 1, 0], np.int32),
        "malignancy_true": np.array([0, 1, 2, 2, 1, -1], np.int32),
    }


@pytest.mark.parametrize("variant", ["hierarchical", "flat"])
def test_mcq_rewards_match_numpy(variant):
    b = make_batch()
    spec = rewards.RewardSpec(variant=variant, format_weight=1.0, option_weight=1.0,
                              malignancy_weight=0.25)
    total, comps = rewards.compute_rewards({k: jnp.asarray(v) for k, v in b.items()}, spec)
    np.testing.assert_allclose(np.asarray(total), np_rewards(b, (1.0, 1.0, 0.25), variant),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sum(comps.values())), np.asarray(total), rtol=1e-6)
    assert float(total.max()) <= 2.0
    if variant == "hierarchical":
        np.testing.assert_allclose(np.asarray(total), [2.0, 1.5, 0.75, 1.25, 2.0, 0.0])


def test_credit_matrices():
    # tree: root(0) -> g(1) -> {a(2), b(3)}; root -> h(4) -> c(5)
    dist = np.array([[0, 1, 2, 2, 1, 2], [1, 0, 1, 1, 2, 3], [2, 1, 0, 2, 3, 4],
                     [2, 1, 2, 0, 3, 4], [1, 2, 3, 3, 0, 1], [2, 3, 4, 4, 1, 0]])
    shared = np.array([[0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0], [0, 1, 2, 1, 0, 0],
                       [0, 1, 1, 2, 0, 0], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 2]])
    cd = rewards.credit_matrix("distance", distance=dist, decay=0.5)
    np.testing.assert_allclose(cd, 0.5 ** dist)
    cs = rewards.credit_matrix("shared_depth", shared_depth=shared)
    assert cs[2, 2] == 1.0 and cs[2, 3] == 0.5 and cs[2, 5] == 0.0 and cs[2, 1] == 0.5
    with pytest.raises(ValueError, match="distance_mode"):
        rewards.credit_matrix("nope")


@pytest.mark.parametrize("variant", ["hierarchical", "flat"])
def test_open_ended_rewards_match_numpy(variant):
    dist = np.array([[0, 1, 2, 2], [1, 0, 1, 1], [2, 1, 0, 2], [2, 1, 2, 0]])
    credit = rewards.credit_matrix("distance", distance=dist, decay=0.5)
    b = make_batch()
    b["node_pred"] = np.array([2, 3, -1, 1, 2, 2], np.int32)
    b["node_true"] = np.array([2, 2, 2, 2, 3, 2], np.int32)
    b["is_open"] = np.array([1, 1, 1, 1, 0, 1], np.int32)
    spec = rewards.RewardSpec(variant=variant, format_weight=1.0, option_weight=2.0,
                              malignancy_weight=0.5)
    total, _ = rewards.compute_rewards({k: jnp.asarray(v) for k, v in b.items()}, spec,
                                       jnp.asarray(credit))
    np.testing.assert_allclose(np.asarray(total), np_rewards(b, (1.0, 2.0, 0.5), variant, credit),
                               rtol=1e-6)


def test_missing_inputs_and_bad_variant_are_clear_errors():
    b = {k: jnp.asarray(v) for k, v in make_batch().items() if k != "option_scores"}
    with pytest.raises(KeyError, match="option_scores"):
        rewards.compute_rewards(b, rewards.RewardSpec())
    with pytest.raises(ValueError, match="variant"):
        rewards.RewardSpec(variant="deep")


def test_check_component_adds_the_weighted_lookup_score():
    b = {k: jnp.asarray(v) for k, v in make_batch().items()}
    base, comps = rewards.compute_rewards(b, rewards.RewardSpec())
    assert "check" not in comps
    score = np.array([1.0, 0.5, 0.0, 0.75, 0.25, 1.0], np.float32)
    spec = rewards.RewardSpec(check_weight=0.5)
    total, comps = rewards.compute_rewards({**b, "check_score": jnp.asarray(score)}, spec)
    np.testing.assert_allclose(np.asarray(total), np.asarray(base) + 0.5 * score, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(comps["check"]), 0.5 * score, rtol=1e-6)
    with pytest.raises(KeyError, match="check_score"):
        rewards.compute_rewards(b, spec)
    with pytest.raises(ValueError, match="check_weight"):
        rewards.RewardSpec(check_weight=-1.0)
