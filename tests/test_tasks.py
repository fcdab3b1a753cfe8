"""The paper's question formats on a small hand-made tree."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from skinr1_jax.data import prompts, tasks
from skinr1_jax.taxonomy import Taxonomy

SPECS = [
    {"name": "root", "parent": None, "malignancy": "benign"},
    {"name": "neoplasm", "parent": "root", "malignancy": "benign"},
    {"name": "melanocytic", "parent": "neoplasm"},
    {"name": "nevus", "parent": "melanocytic"},
    {"name": "melanoma", "parent": "melanocytic", "malignancy": "malignant"},
    {"name": "nodular melanoma", "parent": "melanoma"},
    {"name": "keratinocytic", "parent": "neoplasm"},
    {"name": "seborrheic keratosis", "parent": "keratinocytic"},
    {"name": "actinic keratosis", "parent": "keratinocytic", "malignancy": "precancerous_in_situ"},
    {"name": "basal cell carcinoma", "parent": "keratinocytic", "malignancy": "malignant"},
    {"name": "inflammatory", "parent": "root", "malignancy": "non_neoplastic"},
    {"name": "eczematous", "parent": "inflammatory"},
    {"name": "atopic dermatitis", "parent": "eczematous"},
    {"name": "psoriasiform", "parent": "inflammatory"},
    {"name": "psoriasis", "parent": "psoriasiform"},
]


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return Taxonomy(SPECS)


def example(tax: Taxonomy, name: str, idx: int = 0, dataset: str = "toy") -> dict:
    node = tax.id(name)
    return {"id": f"{name}-{idx}", "dataset": dataset, "image": np.zeros((4, 4, 3), np.uint8), "label": name,
            "node": node, "path": tax.path(node), "malignancy": tax.malignancy(node), "skin_type": 2,
            "concepts": []}


LEAVES = ["nevus", "nodular melanoma", "seborrheic keratosis", "actinic keratosis", "basal cell carcinoma",
          "atopic dermatitis", "psoriasis"]


@pytest.fixture(scope="module")
def split(tax: Taxonomy) -> list[dict]:
    return [example(tax, name, i) for name in LEAVES for i in range(3)]


def check_mcq(q: tasks.Question, ex: dict, pool: tuple[int, ...]) -> None:
    path = ex["path"]
    assert len(q.options) == len(q.option_nodes) == len(q.scores) == 4
    assert len(set(q.option_nodes)) == 4
    assert np.sum(q.scores == np.float32(0.75)) == 1
    on_path = [n for n in q.option_nodes if n in path]
    top = max(path.index(n) for n in on_path)
    for n, s in zip(q.option_nodes, q.scores):
        if n in path:
            assert s == pytest.approx((path.index(n) + 1) / (top + 1) * 0.75)
        else:
            assert s == 0.0 and n in pool
    assert q.option_nodes[q.answer] == path[top]
    assert q.scores[q.answer] == pytest.approx(0.75)
    assert q.malignancy == ex["malignancy"] and q.node == ex["node"]


def test_mcq_properties(tax: Taxonomy, split: list[dict]) -> None:
    pool = tasks.path_pool(split)
    fmt = tasks.TaskFormat(malignancy_classes=tasks.malignancy_classes_of(split))
    for ex in split:
        for seed in range(5):
            q = tasks.make_mcq(ex, pool, tasks.example_rng(seed, ex["id"]), tax, fmt=fmt)
            check_mcq(q, ex, pool)
            for letter, name in zip(prompts.LETTERS, q.options):
                assert f"{letter}: {name}\n" in q.prompt
            assert "<thinking>" in q.prompt and "<final diagnosis>" in q.prompt


def test_mcq_k_distribution_covers_1_to_min_3_l(tax: Taxonomy, split: list[dict]) -> None:
    pool = tasks.path_pool(split)
    fmt = tasks.TaskFormat(malignancy_classes=tasks.malignancy_classes_of(split))
    for name, allowed in [("nodular melanoma", {1, 2, 3}), ("psoriasis", {1, 2, 3}), ("nevus", {1, 2, 3})]:
        ex = example(tax, name)
        counts = collections.Counter()
        for seed in range(600):
            q = tasks.make_mcq(ex, pool, tasks.example_rng(seed, ex["id"]), tax, fmt=fmt)
            counts[sum(n in ex["path"] for n in q.option_nodes)] += 1
        assert set(counts) == allowed
        assert min(counts.values()) > 600 / len(allowed) * 0.7   # uniform, not skewed


def test_mcq_short_path_limits_k(tax: Taxonomy) -> None:
    # A label at depth 2 has L = 2, so at most 2 options come from its path.
    ex = example(tax, "keratinocytic")
    pool = tasks.path_pool([example(tax, n) for n in LEAVES])
    fmt = tasks.TaskFormat(malignancy_classes=("benign", "malignant", "precancerous_in_situ", "non_neoplastic"))
    ks = {sum(n in ex["path"] for n in tasks.make_mcq(ex, pool, tasks.example_rng(s, ex["id"]), tax,
                                                       fmt=fmt).option_nodes) for s in range(200)}
    assert ks == {1, 2}


def test_mcq_deterministic_per_seed_and_id(tax: Taxonomy, split: list[dict]) -> None:
    a = tasks.mcq_questions(split, tax, seed=3)
    b = tasks.mcq_questions(list(reversed(split)), tax, seed=3)[::-1]
    c = tasks.mcq_questions(split, tax, seed=4)
    for qa, qb in zip(a, b):
        assert qa.prompt == qb.prompt and qa.option_nodes == qb.option_nodes
        np.testing.assert_array_equal(qa.scores, qb.scores)
    assert any(qa.option_nodes != qc.option_nodes for qa, qc in zip(a, c))
    # Same seed and id, different example object: same question.
    assert tasks.example_rng(1, "x").integers(1 << 30) == tasks.example_rng(1, "x").integers(1 << 30)


def test_mcq_distractors_come_from_own_dataset(tax: Taxonomy) -> None:
    ham = [example(tax, n, dataset="ham") for n in ["nevus", "nodular melanoma", "basal cell carcinoma"]]
    derm = [example(tax, n, dataset="derm") for n in ["atopic dermatitis", "psoriasis", "actinic keratosis"]]
    ham_pool = set(tasks.path_pool(ham))
    for q in tasks.mcq_questions(ham + derm, tax, seed=0)[:3]:
        assert set(q.option_nodes) <= ham_pool


def test_mcq_too_few_distractors_is_a_clear_error(tax: Taxonomy) -> None:
    ex = example(tax, "nodular melanoma")
    with pytest.raises(ValueError, match="nodular melanoma-0"):
        tasks.make_mcq(ex, tasks.path_pool([ex]), tasks.example_rng(0, ex["id"]), tax,
                       fmt=tasks.TaskFormat())


def test_bad_example_errors_name_the_example(tax: Taxonomy) -> None:
    ex = example(tax, "nevus")
    ex["path"] = ex["path"][:-1]
    with pytest.raises(ValueError, match="nevus-0.*does not end"):
        tasks.open_set([ex], tax)
    ex = example(tax, "atopic dermatitis")
    with pytest.raises(ValueError, match="non_neoplastic"):
        tasks.open_question(ex)


def test_indomain_set(tax: Taxonomy, split: list[dict]) -> None:
    s = tasks.build_eval_set("indomain", split, tax, seed=0)
    assert s.kind == "indomain" and len(s.questions) == len(split) and s.skipped == 0
    pool = tasks.path_pool(split)
    for q, ex in zip(s.questions, split):
        assert q.kind == "indomain"
        check_mcq(q, ex, pool)


def test_b_or_m_set(tax: Taxonomy, split: list[dict]) -> None:
    s = tasks.build_eval_set("b_or_m", split, tax, seed=0)
    for q, ex in zip(s.questions, split):
        assert q.options == ("benign", "malignant", "precancerous in situ", "non-neoplastic")
        assert q.options[q.answer] == prompts.MALIGNANCY_TEXT[ex["malignancy"]]
        assert q.scores[q.answer] == pytest.approx(0.75) and q.scores.sum() == pytest.approx(0.75)
    neoplastic = [ex for ex in split if ex["malignancy"] != "non_neoplastic"]
    s3 = tasks.build_eval_set("b_or_m", neoplastic, tax, seed=0)
    assert all(q.options == ("benign", "malignant", "precancerous in situ") for q in s3.questions)
    assert "non-neoplastic" not in s3.questions[0].prompt


def test_hierarchical_set(tax: Taxonomy, split: list[dict]) -> None:
    shallow = example(tax, "inflammatory")
    s = tasks.build_eval_set("hierarchical", split + [shallow], tax, seed=0)
    assert s.skipped == 1 and len(s.questions) == len(split)
    orders = set()
    for q, ex in zip(s.questions, split):
        assert sorted(q.option_nodes) == sorted(ex["path"])
        assert q.option_nodes[q.answer] == ex["node"]
        assert np.argmax(q.scores) == q.answer
        orders.add(q.option_nodes == tuple(ex["path"]))
    assert orders == {True, False}   # shuffled, not always in path order


class FakeDDx:
    def __init__(self, edges: dict[int, list[int]]):
        self.edges = edges

    def neighbors(self, node_id: int) -> list[int]:
        return self.edges.get(node_id, [])


def test_ddx_set(tax: Taxonomy, split: list[dict]) -> None:
    i = tax.id
    graph = FakeDDx({
        i("nevus"): [i("nodular melanoma"), i("seborrheic keratosis"), i("melanoma")],  # melanoma: not a label
        i("nodular melanoma"): [i("nevus")],
        i("seborrheic keratosis"): [i("nevus"), i("actinic keratosis")],
        i("actinic keratosis"): [i("seborrheic keratosis"), i("basal cell carcinoma")],
        i("basal cell carcinoma"): [i("actinic keratosis")],
        i("atopic dermatitis"): [i("eczematous")],     # no neighbour among the split's labels
    })
    s = tasks.build_eval_set("ddx", split, tax, seed=0, ddx_graph=graph)
    assert s.skipped == 6   # atopic dermatitis and psoriasis, 3 examples each
    for q in s.questions:
        expected = {q.node} | ({n for n in graph.neighbors(q.node)} & {ex["node"] for ex in split})
        assert set(q.option_nodes) == expected
        assert q.option_nodes[q.answer] == q.node
    with pytest.raises(ValueError, match="ddx_graph"):
        tasks.build_eval_set("ddx", split, tax, seed=0)


def test_ddx_caps_options_at_26() -> None:
    specs = [{"name": "root", "parent": None, "malignancy": "benign"}] + [
        {"name": f"d{j}", "parent": "root"} for j in range(40)]
    flat = Taxonomy(specs)
    exs = [{"id": f"e{j}", "node": j + 1, "path": [j + 1], "malignancy": "benign"} for j in range(40)]
    graph = FakeDDx({n: [m for m in range(1, 41) if m != n] for n in range(1, 41)})
    s = tasks.ddx_set(exs, flat, graph, seed=0)
    assert all(len(q.options) == 26 and q.node in q.option_nodes for q in s.questions)
    assert "Z: " in s.questions[0].prompt


def test_open_set(tax: Taxonomy, split: list[dict]) -> None:
    s = tasks.build_eval_set("open", split, tax, seed=0, think_tag="think", final_tag="answer")
    q = s.questions[0]
    assert q.options == () and q.answer == -1 and q.scores.shape == (0,)
    assert "<think>" in q.prompt and "<answer>" in q.prompt and "A: " not in q.prompt
    with pytest.raises(ValueError, match="unknown evaluation set"):
        tasks.build_eval_set("nope", split, tax, seed=0)


def test_option_check_applies_to_node_options_only(tax: Taxonomy, split: list[dict]) -> None:
    # The SFT mix writes, and the evaluation reads, an option check exactly for these.
    graph = FakeDDx({tax.id("nevus"): [tax.id("nodular melanoma")]})
    first = {kind: tasks.build_eval_set(kind, split, tax, seed=0, ddx_graph=graph).questions[0]
             for kind in ("indomain", "hierarchical", "ddx", "b_or_m", "open")}
    assert {k for k, q in first.items() if tasks.options_are_nodes(q)} == {"indomain",
                                                                           "hierarchical", "ddx"}


def test_every_set_builds_on_the_default_taxonomy_subset() -> None:
    from skinr1_jax.data.synthetic.dataset import resolve_leaves
    from skinr1_jax.taxonomy import load_default_taxonomy

    full = load_default_taxonomy()
    leaves = resolve_leaves(full, "default")
    exs = [{"id": f"t{i}", "dataset": "synthetic_derm", "node": n, "path": full.path(n),
            "malignancy": full.malignancy(n)} for i, n in enumerate(leaves * 2)]
    pool = tasks.path_pool(exs)
    for kind in ("indomain", "b_or_m", "hierarchical", "open"):
        s = tasks.build_eval_set(kind, exs, full, seed=0)
        assert len(s.questions) == len(exs) and s.skipped == 0, kind
    for q, ex in zip(tasks.build_eval_set("indomain", exs, full, seed=0).questions, exs):
        check_mcq(q, ex, pool)
    from importlib import resources

    from skinr1_jax.knowledge import load_default_kb
    if not resources.files("skinr1_jax.knowledge").joinpath("data/knowledge_base.json").is_file():
        pytest.skip("the default knowledge base file is not in the package yet")
    graph = load_default_kb(full).ddx_graph()
    s = tasks.build_eval_set("ddx", exs, full, seed=0, ddx_graph=graph)
    assert len(s.questions) + s.skipped == len(exs) and s.questions
    for q in s.questions:
        assert set(q.option_nodes) - {q.node} <= set(graph.neighbors(q.node))


@pytest.mark.parametrize("task", ["mcq", "mixed"])
def test_rl_questions_draw_options_per_image(tax: Taxonomy, split: list[dict], task: str) -> None:
    from configs.default import get_config
    from skinr1_jax.stages.rl import build_questions

    config = get_config()
    config.rl.task, config.rl.option_draws = task, 1
    single = build_questions(config, split, tax)
    config.rl.option_draws = 3
    drawn = build_questions(config, split, tax)
    n = len(split)
    assert len(single) == n and len(drawn) == 3 * n
    key = lambda q: (q.example_id, q.prompt, q.options, q.answer, tuple(q.scores))
    assert [key(q) for q in drawn[:n]] == [key(q) for q in single]   # draw 0: the single draw
    pool = tasks.path_pool(split)
    changed = 0
    for i, ex in enumerate(split):
        mine = [drawn[d * n + i] for d in range(3)]
        assert {q.example_id for q in mine} == {str(ex["id"])}
        assert len({q.kind for q in mine}) == 1   # mixed: the image's form holds over draws
        if mine[0].kind == "open":
            continue
        for q in mine:
            check_mcq(q, ex, pool)
        changed += len({(q.options, q.answer) for q in mine}) > 1
    assert changed >= 0.8 * sum(q.kind != "open" for q in single)
    if task == "mixed":
        assert {q.kind for q in single} == {"mcq", "open"}
