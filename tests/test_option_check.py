"""The option-check diagnostics read back exactly what the SFT writer wrote, and tell a wrong
path from a failed copy from an answer that ignores the check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from configs import default
from skinr1_jax.data import tasks
from skinr1_jax.data.sft_mix import option_check, parse_option_check
from skinr1_jax.data.synthetic import build_splits
from skinr1_jax.eval.option_check import check_scores, implied_answer, option_check_rates
from skinr1_jax.knowledge import load_default_kb
from skinr1_jax.taxonomy import load_default_taxonomy


@pytest.fixture(scope="module")
def questions():
    cfg = default.get_config()
    cfg.data.dense_per_class, cfg.data.sparse_per_class = 1, 1
    cfg.data.val_per_class = cfg.data.test_per_class = cfg.data.ood_per_class = 1
    taxonomy = load_default_taxonomy()
    test = build_splits(cfg.data, taxonomy, load_default_kb(taxonomy), seed=0)["test"]
    return taxonomy, tasks.mcq_questions(test, taxonomy, seed=3)


def _response(q, taxonomy, thinking_check: str, letter: str) -> str:
    return (f"<thinking>The lesion shows scale.{thinking_check}</thinking>\n"
            f"<final diagnosis>{letter}: x, benign</final diagnosis>")


def _swap_b_c(text: str, q) -> str:
    """`text` with option lines B and C of its check naming each other's option."""
    b, c = f"\nB: {q.options[1]},", f"\nC: {q.options[2]},"
    return text.replace(b, "\0").replace(c, f"\nB: {q.options[2]},").replace("\0", f"\nC: {q.options[1]},")


def test_parse_reads_back_what_option_check_writes(questions):
    taxonomy, qs = questions
    for q in qs:
        check = parse_option_check(_response(q, taxonomy, option_check(q, taxonomy), "A"))
        assert check is not None
        assert check.path == tuple(taxonomy.name(n) for n in taxonomy.path(q.node))
        assert [(l, n) for l, n, _ in check.lines] == [("ABCD"[i], o) for i, o in enumerate(q.options)]
        assert check.letter == "ABCD"[q.answer]
        # The written check's own conclusion is the question's answer.
        assert implied_answer(q.options, check.path) == q.answer
    assert parse_option_check("<thinking>no check here</thinking>") is None


def test_rates_separate_path_copy_and_letter_errors(questions):
    taxonomy, qs = questions
    right = [_response(q, taxonomy, option_check(q, taxonomy), "ABCD"[q.answer]) for q in qs]
    answers = [q.answer for q in qs]
    perfect = option_check_rates(qs, answers, right, taxonomy)
    assert perfect == {"checked": 1.0, "path_right": 1.0, "lines_copied": 1.0,
                       "misaligned_copies": 0.0, "follows_path": 1.0, "implied_accuracy": 1.0}

    # Copy errors: lines B and C swapped in every check; the path and letter stay right.
    swapped = option_check_rates(qs, answers, [_swap_b_c(t, q) for t, q in zip(right, qs)], taxonomy)
    assert swapped["lines_copied"] == pytest.approx(0.5)
    assert swapped["misaligned_copies"] == pytest.approx(0.5)
    assert swapped["path_right"] == swapped["follows_path"] == 1.0

    # A wrong stated diagnosis: each check written for another disease's path.
    nodes = sorted({q.node for q in qs})
    wrong = [_response(q, taxonomy, option_check(dataclasses.replace(
        q, node=nodes[(nodes.index(q.node) + 1) % len(nodes)]), taxonomy), "A") for q in qs]
    rates = option_check_rates(qs, [0] * len(qs), wrong, taxonomy)
    assert rates["path_right"] == 0.0 and rates["lines_copied"] == 1.0
    implied = [implied_answer(q.options, parse_option_check(t).path) for q, t in zip(qs, wrong)]
    assert rates["follows_path"] == pytest.approx(np.mean([i == 0 for i in implied]))
    assert rates["implied_accuracy"] == pytest.approx(np.mean([i == q.answer for i, q in zip(implied, qs)]))
    assert rates["implied_accuracy"] < 1.0

    # No check at all counts as failing every rate.
    none = option_check_rates(qs, answers, ["<thinking>x</thinking>"] * len(qs), taxonomy)
    assert all(v == 0.0 for v in none.values())
    with pytest.raises(ValueError, match="questions"):
        option_check_rates(qs, answers[:-1], right, taxonomy)


def test_check_scores_pay_for_copying_and_following_the_written_path(questions):
    taxonomy, qs = questions
    right = [_response(q, taxonomy, option_check(q, taxonomy), "ABCD"[q.answer]) for q in qs]
    answers = [q.answer for q in qs]
    np.testing.assert_allclose(check_scores(qs, answers, right), 1.0)
    # A letter other than the one the written check points to: the copy half only.
    other = [(q.answer + 1) % 4 for q in qs]
    np.testing.assert_allclose(check_scores(qs, other, right), 0.5)
    # Lines B and C swapped: half the lines copied; the letter still follows the path.
    swapped = [_swap_b_c(t, q) for t, q in zip(right, qs)]
    np.testing.assert_allclose(check_scores(qs, answers, swapped), 0.75)
    # A wrong path, followed: full score although the answer is wrong (the lookup is right).
    nodes = sorted({q.node for q in qs})
    wrong = [_response(q, taxonomy, option_check(dataclasses.replace(
        q, node=nodes[(nodes.index(q.node) + 1) % len(nodes)]), taxonomy), "A") for q in qs]
    implied = [implied_answer(q.options, parse_option_check(t).path) for q, t in zip(qs, wrong)]
    scores = check_scores(qs, implied, wrong)
    np.testing.assert_allclose(scores[np.array(implied) >= 0], 1.0)
    np.testing.assert_allclose(scores[np.array(implied) < 0], 0.5)   # no option on its path
    # No check, or no parsable letter: nothing.
    np.testing.assert_allclose(check_scores(qs, answers, ["<thinking>x</thinking>"] * len(qs)), 0.0)
    np.testing.assert_allclose(check_scores(qs, [-1] * len(qs), right), 0.5)
    with pytest.raises(ValueError, match="questions"):
        check_scores(qs, answers[:-1], right)


def test_results_md_lists_the_rates_only_when_present(questions):
    from skinr1_jax.stages.eval import results_markdown

    taxonomy, qs = questions
    right = [_response(q, taxonomy, option_check(q, taxonomy), "ABCD"[q.answer]) for q in qs]
    rates = option_check_rates(qs, [q.answer for q in qs], right, taxonomy)
    detail = {"n": len(qs), "ci95": (0.5, 1.0)}
    md = results_markdown({"sft": {"mcq_indomain": 1.0,
                                   "details": {"mcq_indomain": {**detail, "option_check": rates}}}})
    assert "| sft | mcq_indomain | 1.000 | 1.000 | 1.000 | 0.000 | 1.000 | 1.000 |" in md
    assert "Option checks" not in results_markdown(
        {"sft": {"mcq_indomain": 1.0, "details": {"mcq_indomain": detail}}})
