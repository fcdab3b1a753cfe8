"""synthetic_derm: renderer, signatures, splits, learnability and the TFDS builder."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from skinr1_jax.data.synthetic import dataset as ds
from skinr1_jax.data.synthetic.render import (
    Acquisition, Signature, color_rgb, render_features, render_image, sample_acquisition)
from skinr1_jax.data.synthetic.signature import render_specs
from skinr1_jax.data.synthetic.subsets import DEFAULT_LEAVES, FITZPATRICK17K_COUNTS, FULL_LEAVES
from skinr1_jax.knowledge import CONCEPTS, Profile, concept_of_feature, load_default_kb
from skinr1_jax.knowledge.vocab import FEATURE_FIELDS
from skinr1_jax.taxonomy import load_default_taxonomy


def make_profile(name="test lesion", **fields) -> Profile:
    feats = {f: tuple(fields.get(f, ())) for f in FEATURE_FIELDS}
    concepts = {concept_of_feature(f, w) for f, ws in feats.items() for w in ws}
    return Profile(name=name, **feats, distinguishing=(), differentials=(), rules=(),
                   concepts=tuple(c for c in CONCEPTS if c in concepts))


RICH = make_profile(
    morphology=("papule", "nodule", "ulcer"), colors=("pink", "brown", "black"),
    surface=("scale", "crust", "telangiectasia"), border=("well-defined", "rolled"),
    configuration=("solitary", "grouped", "annular"), size=("small", "medium"),
    elevation=("dome-shaped", "raised"), sites=("face",))


def small_cfg(**kw) -> dict:
    cfg = dict(subset="default", class_balance="balanced", image_size=32, dense_per_class=2,
               sparse_per_class=3, val_per_class=1, test_per_class=2, ood_per_class=2, train_fraction=1.0)
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def tax():
    return load_default_taxonomy()


@pytest.fixture(scope="module")
def kb(tax):
    return load_default_kb(tax)


@pytest.fixture(scope="module")
def splits(tax, kb):
    return ds.build_splits(small_cfg(), tax, kb, seed=3)


# ---- renderer ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64, 96])
def test_render_shape_dtype_and_determinism(size):
    a, ca = render_image(RICH, 3, np.random.default_rng(7), size, sample_acquisition(np.random.default_rng(1)))
    b, cb = render_image(RICH, 3, np.random.default_rng(7), size, sample_acquisition(np.random.default_rng(1)))
    c, _ = render_image(RICH, 3, np.random.default_rng(8), size)
    assert a.shape == (size, size, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and ca == cb
    assert not np.array_equal(a, c)
    assert a.std() > 3          # not a blank canvas


def test_render_reports_exactly_drawn_subsets():
    seen: dict[str, set] = {f: set() for f in FEATURE_FIELDS}
    for seed in range(60):
        _, feats = render_features(RICH, 2, np.random.default_rng(seed), 48)
        for f in ("morphology", "colors", "surface", "border", "configuration", "size", "elevation"):
            assert feats[f], f"field {f} empty in seed {seed}"
            assert set(feats[f]) <= set(getattr(RICH, f))
            seen[f] |= set(feats[f])
        assert len(feats["configuration"]) == 1
        assert "sites" not in feats
        _, concepts = render_image(RICH, 2, np.random.default_rng(seed), 48)
        assert set(concepts) <= set(RICH.concepts) and concepts
        assert concepts == [c for c in CONCEPTS if c in concepts]
    # Random subsets: over many images every option of every field appears.
    for f in ("morphology", "colors", "surface", "border", "configuration", "size", "elevation"):
        assert seen[f] == set(getattr(RICH, f)), f


def test_anchors_always_drawn():
    sig = Signature(anchors=(("colors", "black"), ("surface", "crust"), ("configuration", "annular")))
    for seed in range(25):
        _, feats = render_features(RICH, 4, np.random.default_rng(seed), 40, signature=sig)
        assert "black" in feats["colors"] and "crust" in feats["surface"]
        assert feats["configuration"] == ["annular"]


def test_colours_follow_skin_tone():
    light, dark = np.array((0.95, 0.8, 0.74)), np.array((0.27, 0.17, 0.12))
    assert color_rgb("depigmented", dark).sum() > dark.sum() + 1.0
    assert color_rgb("brown", light).sum() < light.sum() - 0.5
    assert color_rgb("red", light)[0] > color_rgb("red", light)[1] + 0.3
    # In a rendered image, a large depigmented patch on type VI skin is far lighter than the
    # corners, and a dark brown one on type I skin darker.
    for colour, st, sign in (("depigmented", 6, 1), ("dark brown", 1, -1)):
        p = make_profile(morphology=("patch",), colors=(colour,), configuration=("solitary",),
                         size=("large",), border=("well-defined",), elevation=("flat",))
        img, _ = render_image(p, st, np.random.default_rng(0), 64, signature=Signature(aspect=(1.0, 1.0)))
        centre = img[28:36, 28:36].mean()
        corners = np.mean([img[:6, :6].mean(), img[:6, -6:].mean(), img[-6:, :6].mean(), img[-6:, -6:].mean()])
        assert sign * (centre - corners) > 40


def test_acquisition_changes_image():
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    clean, _ = render_image(RICH, 2, rng(), 64)
    blurred, _ = render_image(RICH, 2, rng(), 64, Acquisition(blur=2.0))
    cast, _ = render_image(RICH, 2, rng(), 64, Acquisition(cast=(1.2, 1.0, 0.8)))
    edge = lambda im: np.abs(np.diff(im.astype(float), axis=1)).mean()  # noqa: E731
    assert edge(blurred) < 0.8 * edge(clean)
    assert cast[..., 0].mean() > clean[..., 0].mean() and cast[..., 2].mean() < clean[..., 2].mean()


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="skin_type"):
        render_image(RICH, 7, np.random.default_rng(0), 32)
    bad = dataclasses.replace(make_profile(name="bad one", colors=("pink",)), colors=("chartreuse",))
    with pytest.raises(ValueError, match="chartreuse"):
        render_image(bad, 2, np.random.default_rng(0), 32)


# ---- signatures ------------------------------------------------------------------------------

def test_every_sibling_pair_is_separable(tax, kb):
    for subset in ("default", "full"):
        specs = render_specs(tax, kb, ds.resolve_leaves(tax, subset))
        for a, b in itertools.combinations(specs.values(), 2):
            if tax.parent(a.node) != tax.parent(b.node):
                continue
            feats = {s.node: {(f, w) for f in FEATURE_FIELDS for w in getattr(s.profile, f)} for s in (a, b)}
            sep = any(x not in feats[b.node] for x in a.signature.anchors) or \
                any(x not in feats[a.node] for x in b.signature.anchors)
            assert sep, (a.name, b.name)
            assert a.signature.tint == b.signature.tint and a.signature.lobes == b.signature.lobes
        for s in specs.values():
            kb_profile = kb.profile(s.node)
            for f, w in s.signature.anchors:
                assert w in getattr(s.profile, f) and w in getattr(kb_profile, f)


# ---- splits ----------------------------------------------------------------------------------

def test_split_sizes_and_records(splits, tax, kb):
    n = len(DEFAULT_LEAVES)
    cfg = small_cfg()
    for split, key in ds._PER_CLASS_KEY.items():
        assert len(splits[split]) == n * cfg[key], split
    ids = [e["id"] for s in splits.values() for e in s]
    assert len(ids) == len(set(ids))
    for split, exs in splits.items():
        for e in exs:
            assert set(e) == {"id", "dataset", "image", "label", "node", "path", "malignancy", "skin_type", "concepts"}
            assert e["dataset"] == "synthetic_derm" and e["label"] in DEFAULT_LEAVES
            assert e["node"] == tax.id(e["label"]) and e["path"] == tax.path(e["node"])
            assert e["malignancy"] == tax.malignancy(e["node"])
            assert e["image"].shape == (32, 32, 3) and e["image"].dtype == np.uint8
            assert 1 <= e["skin_type"] <= 6
            if split == "sparse_train":
                assert e["concepts"] == []
            else:
                assert e["concepts"], e["id"]
                assert set(e["concepts"]) <= set(kb.profile(e["node"]).concepts) <= set(CONCEPTS)


def test_build_is_deterministic_and_nested(splits, tax, kb):
    again = ds.build_splits(small_cfg(), tax, kb, seed=3)
    other = ds.build_splits(small_cfg(), tax, kb, seed=4)
    for split in ds.SPLITS:
        assert [e["id"] for e in again[split]] == [e["id"] for e in splits[split]]
        assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(again[split], splits[split]))
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(other["test"], splits["test"]))
    # A smaller training fraction keeps a per-class prefix of the same images.
    big = ds.build_splits(small_cfg(sparse_per_class=6, dense_per_class=0), tax, kb, seed=3)
    half = ds.build_splits(small_cfg(sparse_per_class=6, dense_per_class=0, train_fraction=0.5), tax, kb, seed=3)
    assert len(half["sparse_train"]) == len(big["sparse_train"]) // 2
    big_by_id = {e["id"]: e for e in big["sparse_train"]}
    assert all(np.array_equal(big_by_id[e["id"]]["image"], e["image"]) for e in half["sparse_train"])


def test_fitzpatrick_balance_follows_real_counts():
    names = list(DEFAULT_LEAVES)
    counts = ds.class_counts(small_cfg(class_balance="fitzpatrick", sparse_per_class=40), names)
    sparse = counts["sparse_train"]
    assert abs(sum(sparse.values()) - 40 * len(names)) <= len(names)
    assert sparse["psoriasis"] > sparse["squamous cell carcinoma"] > sparse["melanoma"] > sparse["seborrheic keratosis"]
    ratio = sparse["psoriasis"] / sparse["seborrheic keratosis"]
    assert abs(ratio - FITZPATRICK17K_COUNTS["psoriasis"] / FITZPATRICK17K_COUNTS["seborrheic keratosis"]) < 1.5
    assert set(counts["test"].values()) == {2}          # evaluation stays balanced


def test_ood_split_shifts_skin_type_and_acquisition(tax, kb):
    cfg = small_cfg(dense_per_class=0, sparse_per_class=8, val_per_class=0, test_per_class=0, ood_per_class=8)
    out = ds.build_splits(cfg, tax, kb, seed=0)
    st_in = np.array([e["skin_type"] for e in out["sparse_train"]])
    st_ood = np.array([e["skin_type"] for e in out["ood_test"]])
    assert (st_in >= 5).mean() < 0.15 and (st_ood >= 5).mean() > 0.7
    sharp = lambda exs: np.mean([np.abs(np.diff(e["image"].astype(float), axis=1)).mean() for e in exs])  # noqa: E731
    assert sharp(out["ood_test"]) < sharp(out["sparse_train"])


def test_bad_config_errors(tax, kb):
    with pytest.raises(ValueError, match="class_balance"):
        ds.build_splits(small_cfg(class_balance="weird"), tax, kb, 0)
    with pytest.raises(ValueError, match="image_size"):
        ds.build_splits(small_cfg(image_size=8), tax, kb, 0)
    with pytest.raises(ValueError, match="subset"):
        ds.build_splits(small_cfg(subset="most"), tax, kb, 0)
    with pytest.raises(ValueError, match="train_fraction"):
        ds.build_splits(small_cfg(train_fraction=0.0), tax, kb, 0)
    sub = tax.subset(list(DEFAULT_LEAVES))
    with pytest.raises(KeyError, match="not in the taxonomy"):
        ds.resolve_leaves(sub, "full")
    assert len(set(ds.resolve_leaves(tax, "full"))) == len(FULL_LEAVES) == 114


def test_subset_taxonomy_ids(tax, kb):
    sub = tax.subset(list(DEFAULT_LEAVES))
    out = ds.build_splits(small_cfg(dense_per_class=0, sparse_per_class=0, val_per_class=0,
                                    test_per_class=1, ood_per_class=0), sub, kb, seed=3)
    full = ds.build_splits(small_cfg(dense_per_class=0, sparse_per_class=0, val_per_class=0,
                                     test_per_class=1, ood_per_class=0), tax, kb, seed=3)
    for a, b in zip(out["test"], full["test"]):
        assert a["node"] == sub.id(a["label"]) and a["path"] == sub.path(a["node"])
        assert np.array_equal(a["image"], b["image"])


# ---- the tree shows, and the data is learnable ----------------------------------------------------

def _stats(images: list[np.ndarray]) -> np.ndarray:
    x = np.stack(images).astype(np.float32) / 255
    n, s = len(x), x.shape[1]
    k = s // 8
    small = x.reshape(n, 8, k, 8, k, 3).mean((2, 4)).reshape(n, -1)
    flat = x.reshape(n, -1, 3)
    pct = np.percentile(flat, [5, 25, 50, 75, 95], axis=1).transpose(1, 0, 2).reshape(n, -1)
    edges = np.abs(np.diff(x, axis=1)).mean((1, 2))
    return np.concatenate([small, pct, flat.std(1), edges], 1)


@pytest.fixture(scope="module")
def learn_data(tax, kb):
    cfg = small_cfg(image_size=64, dense_per_class=0, sparse_per_class=40, val_per_class=0,
                    test_per_class=15, ood_per_class=0)
    return ds.build_splits(cfg, tax, kb, seed=11)


def test_siblings_look_closer_than_distant_diseases(learn_data, tax):
    exs = learn_data["sparse_train"]
    names = sorted({e["label"] for e in exs})
    feats = _stats([e["image"] for e in exs])
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    labels = np.array([names.index(e["label"]) for e in exs])
    cent = np.stack([feats[labels == i].mean(0) for i in range(len(names))])
    sib, far = [], []
    for i, j in itertools.combinations(range(len(names)), 2):
        d = np.linalg.norm(cent[i] - cent[j])
        a, b = tax.id(names[i]), tax.id(names[j])
        if tax.parent(a) == tax.parent(b):
            sib.append(d)
        elif tax.path(a)[0] != tax.path(b)[0]:
            far.append(d)
    assert sib and far
    assert np.mean(sib) < np.mean(far)


def test_simple_classifier_beats_chance_by_far(learn_data):
    names = sorted({e["label"] for e in learn_data["sparse_train"]})
    def xy(split):
        exs = learn_data[split]
        return _stats([e["image"] for e in exs]), np.array([names.index(e["label"]) for e in exs])
    x, y = xy("sparse_train")
    xt, yt = xy("test")
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z, zt = (x - mu) / sd, (xt - mu) / sd
    w, b = np.zeros((z.shape[1], len(names))), np.zeros(len(names))
    for _ in range(300):                           # softmax regression, full-batch gradient descent
        logits = z @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        w -= 0.2 * (z.T @ p / len(y) + 1e-3 * w)
        b -= 0.2 * p.mean(0)
    acc = ((zt @ w + b).argmax(1) == yt).mean()
    assert acc > 4.0 / len(names), acc              # chance is 1/12


# ---- TFDS builder and sample grid ------------------------------------------------------------

def test_tfds_builder_roundtrip(tmp_path, tax, kb):
    from skinr1_jax.data.builders.synthetic_derm import SyntheticDerm, config_from_data, load_split
    cfg = small_cfg(dense_per_class=1, sparse_per_class=2, val_per_class=1, test_per_class=1, ood_per_class=1)
    config = config_from_data(cfg, seed=5)
    builder = SyntheticDerm(data_dir=str(tmp_path), config=config, taxonomy=tax, kb=kb)
    builder.download_and_prepare()
    ref = ds.build_splits(cfg, tax, kb, seed=5)
    for split in ds.SPLITS:
        got = load_split(f"synthetic_derm/{config.name}", split, tmp_path)
        assert len(got) == len(ref[split]) > 0
        for a, r in zip(got, ref[split]):
            assert set(a) == set(r)
            assert np.array_equal(a["image"], r["image"]) and a["image"].dtype == np.uint8
            assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in r.items() if k != "image"}
    assert config_from_data(cfg, seed=6).name != config.name


def test_sample_grid(tmp_path, tax, kb):
    from PIL import Image

    from skinr1_jax.data.synthetic.preview import save_sample_grid
    out = save_sample_grid(tmp_path / "grid.png", tax, kb, per_row=2, image_size=32)
    img = Image.open(out)
    assert img.size[0] > 100 and img.size[1] > 12 * 32
