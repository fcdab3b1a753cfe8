"""TFDS builders: each is built from a tiny fixture in its official layout (real column names,
PIL-drawn stand-in images), read back, and checked for harmonised labels, the split rule and
group keys that never straddle splits. Plus the split rule itself and bad input."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from skinr1_jax.data import splits
from skinr1_jax.data.builders import (
    BUILDERS, BadImageError, DatasetFormatError, load_examples, load_report)
from skinr1_jax.knowledge import SKINCON_COLUMNS
from skinr1_jax.taxonomy import load_default_taxonomy

FITZ_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "fitzpatrick17k" / "fitzpatrick17k.csv"
PAD_COLUMNS = ("patient_id,lesion_id,smoke,drink,background_father,background_mother,age,pesticide,gender,"
               "skin_cancer_history,cancer_history,has_piped_water,has_sewage_system,fitspatrick,region,"
               "diameter_1,diameter_2,diagnostic,itch,grew,hurt,changed,bleed,elevation,img_id,biopsed").split(",")
SPLIT_NAMES = ("train", "validation", "test")


@pytest.fixture(scope="module")
def tax():
    return load_default_taxonomy()


def _image(path: Path, seed: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size + 3, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _csv(path: Path, rows: list[dict], columns=None, delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns or rows[0]), delimiter=delimiter, restval="")
        w.writeheader()
        w.writerows(rows)


def _build(name: str, root: Path, manual: Path, **kwargs):
    builder = BUILDERS[name](data_dir=str(root / "data"), manual_dir=str(manual), **kwargs)
    builder.download_and_prepare()
    read = {s: load_examples(name, s, root / "data") for s in builder.info.splits}
    return builder, read


def _split_of(read: dict[str, list[dict]]) -> dict[str, str]:
    return {ex["id"]: s for s, exs in read.items() for ex in exs}


def _assert_groups_contained(read: dict[str, list[dict]]) -> None:
    where: dict[str, set[str]] = {}
    for s, exs in read.items():
        for ex in exs:
            if ex["group"]:
                where.setdefault(ex["group"], set()).add(s)
    assert where and all(len(v) == 1 for v in where.values()), {g: v for g, v in where.items() if len(v) > 1}


def _assert_example(ex: dict, tax, dataset: str) -> None:
    assert ex["dataset"] == dataset
    assert ex["image"].dtype == np.uint8 and ex["image"].ndim == 3 and ex["image"].shape[2] == 3
    assert ex["node"] == tax.id(ex["label"])
    assert ex["path"] == tax.path(ex["node"]) and ex["path"][-1] == ex["node"]
    assert ex["malignancy"] == tax.malignancy(ex["node"])
    assert -1 <= ex["skin_type"] <= 6


# ---- fixtures in the official layouts ---------------------------------------------------------

HAM_DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc", "unk")


@pytest.fixture(scope="module")
def ham(tmp_path_factory):
    root = tmp_path_factory.mktemp("ham")
    man = root / "manual"
    rows = []
    for i in range(32):
        image_id = f"ISIC_{i:07d}"
        part = "HAM10000_images_part_1" if i % 2 else "HAM10000_images_part_2"
        _image(man / part / f"{image_id}.jpg", i)
        rows.append(dict(lesion_id=f"HAM_{i // 2:07d}", image_id=image_id, dx=HAM_DX[(i // 2) % 8],
                         dx_type="histo", age="45.0", sex="male", localization="back", dataset="vidir_modern"))
    _csv(man / "HAM10000_metadata.csv", rows)
    gt = []
    for i, code in enumerate(("MEL", "NV", "BCC", "AKIEC")):
        image_id = f"ISIC_{100 + i:07d}"
        _image(man / "ISIC2018_Task3_Test_Images" / f"{image_id}.jpg", 100 + i)
        gt.append({"image": image_id, **{c: "1.0" if c == code else "0.0"
                                         for c in ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")}})
    _csv(man / "ISIC2018_Task3_Test_GroundTruth.csv", gt)
    return (*_build("ham10000", root, man), rows, gt)


def test_ham10000(ham, tax):
    builder, read, rows, gt = ham
    split_of = _split_of(read)
    for exs in read.values():
        for ex in exs:
            _assert_example(ex, tax, "ham10000")
    by_id = {ex["id"]: ex for exs in read.values() for ex in exs}
    mel = next(r["image_id"] for r in rows if r["dx"] == "mel")
    assert tax.name(by_id[mel]["path"][-1]) == "melanoma" and by_id[mel]["malignancy"] == "malignant"
    akiec = next(r["image_id"] for r in rows if r["dx"] == "akiec")
    assert by_id[akiec]["malignancy"] == "precancerous_in_situ"
    # official test kept; train split 75/25 into train / validation, lesions kept whole
    assert sorted(ex["id"] for ex in read["test"]) == sorted(g["image"] for g in gt)
    assert {by_id[g["image"]]["raw_label"] for g in gt} == {"mel", "nv", "bcc", "akiec"}
    n_train, n_val = len(read["train"]), len(read["validation"])
    assert n_train + n_val == 28 and 4 <= n_val <= 10
    _assert_groups_contained({s: read[s] for s in ("train", "validation")})
    # the unknown code is reported with its count, never silently dropped
    report = load_report("ham10000", Path(builder.data_dir).parents[1])
    assert report.unmapped == Counter({"unk": 4}) and report.num_mapped == 32
    assert set(split_of) == {r["image_id"] for r in rows if r["dx"] != "unk"} | {g["image"] for g in gt}


@pytest.mark.parametrize("name, delimiter", [("HAM10000_metadata", "\t"), ("HAM10000_metadata.tab", "\t"),
                                             ("HAM10000_metadata.csv", ",")])
def test_ham10000_metadata_delimiter_is_sniffed(tmp_path, tax, name, delimiter):
    # The Dataverse serves the metadata as HAM10000_metadata (no extension) or .tab, tab-separated
    # with quoted strings; the suffix says nothing about the delimiter.
    man = tmp_path / "manual"
    rows = []
    for i, dx in enumerate(("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df", "nv")):
        image_id = f"ISIC_{i:07d}"
        _image(man / "HAM10000_images_part_1" / f"{image_id}.jpg", i)
        rows.append(dict(lesion_id=f"HAM_{i:07d}", image_id=image_id, dx=dx, dx_type="histo", age="50.0",
                         sex="female", localization="back"))
    path = man / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter, quoting=csv.QUOTE_NONNUMERIC)
        w.writeheader()
        w.writerows(rows)
    _, read = _build("ham10000", tmp_path, man)
    by_id = {ex["id"]: ex for exs in read.values() for ex in exs}
    assert sorted(by_id) == [r["image_id"] for r in rows]
    assert by_id["ISIC_0000001"]["label"] == "melanoma" and by_id["ISIC_0000001"]["group"] == "HAM_0000001"


def test_table_without_the_columns_names_file_and_delimiter(tmp_path):
    man = tmp_path / "manual"
    _image(man / "HAM10000_images_part_1" / "ISIC_0000000.jpg", 0)
    (man / "HAM10000_metadata").write_text("lesion_id|image_id|dx\nHAM_1|ISIC_0000000|nv\n")
    with pytest.raises(DatasetFormatError, match=r"HAM10000_metadata: missing column\(s\) \['lesion_id', "
                                                 r"'image_id', 'dx'\].*read as ','-separated"):
        BUILDERS["ham10000"](data_dir=str(tmp_path / "d"), manual_dir=str(man)).download_and_prepare()


@pytest.fixture(scope="module")
def bcn(tmp_path_factory):
    root = tmp_path_factory.mktemp("bcn")
    man = root / "manual"
    dx = ("NV", "MEL", "BCC", "BKL", "AK", "SCC", "DF", "VASC", "other")
    rows = []
    for i in range(18):
        name = f"BCN_{i:010d}.jpg"
        _image(man / "bcn_20k_train" / name, i)
        rows.append(dict(bcn_filename=name, age_approx="55", anatom_site_general="anterior torso",
                         diagnosis=dx[i % 9], lesion_id=f"BCN_lesion_{i}", capture_date="2012-01-01",
                         sex="female", split=("train", "val", "test")[i % 3]))
    _csv(man / "bcn_20k_train.csv", rows)
    return (*_build("bcn20000", root, man), rows)


def test_bcn20000_keeps_official_three_way_split(bcn, tax):
    _, read, rows = bcn
    split_of = _split_of(read)
    expected = {Path(r["bcn_filename"]).stem: splits.normalize_split_name(r["split"])
                for r in rows if r["diagnosis"] != "other"}
    assert split_of == expected
    by_raw = {ex["raw_label"]: ex["label"] for exs in read.values() for ex in exs}
    assert by_raw["AK"] == "actinic keratosis" and by_raw["NV"] == "nevocytic nevus"
    for exs in read.values():
        for ex in exs:
            _assert_example(ex, tax, "bcn20000")


@pytest.fixture(scope="module")
def pad(tmp_path_factory):
    root = tmp_path_factory.mktemp("pad")
    man = root / "manual"
    codes = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
    rows = []
    for i in range(36):
        patient, lesion = i // 3, 800 + i // 2
        img_id = f"PAT_{patient}_{lesion}_{i}.png"
        _image(man / "images" / f"imgs_part_{1 + i % 3}" / img_id, i)
        row = {c: "False" for c in PAD_COLUMNS}
        row.update(patient_id=f"PAT_{patient}", lesion_id=str(lesion), age="60",
                   fitspatrick="" if i % 7 == 0 else f"{1 + i % 6}.0", region="FACE",
                   diameter_1="6.0", diameter_2="5.0", diagnostic=codes[i % 6], img_id=img_id)
        rows.append(row)
    _csv(man / "metadata.csv", rows, PAD_COLUMNS)
    return (*_build("pad_ufes20", root, man), rows)


def test_pad_ufes20_60_20_20_by_patient(pad, tax):
    _, read, rows = pad
    assert set(read) == set(SPLIT_NAMES)
    sizes = {s: len(v) for s, v in read.items()}
    assert sum(sizes.values()) == 36 and 15 <= sizes["train"] <= 27 and sizes["test"] >= 3
    _assert_groups_contained(read)
    by_id = {ex["id"]: ex for exs in read.values() for ex in exs}
    for r in rows:
        ex = by_id[Path(r["img_id"]).stem]
        _assert_example(ex, tax, "pad_ufes20")
        assert ex["group"] == r["patient_id"]
        assert ex["skin_type"] == (int(float(r["fitspatrick"])) if r["fitspatrick"] else -1)
        if r["diagnostic"] == "SEK":
            assert ex["label"] == "seborrheic keratosis" and ex["malignancy"] == "benign"


def test_read_back_under_another_taxonomy_and_by_name(pad, tax):
    builder, read, _ = pad
    data_dir = Path(builder.data_dir).parents[1]
    labels = sorted({ex["label"] for exs in read.values() for ex in exs})
    sub = tax.subset(labels)  # renumbered ids: stored ids are stale, names are not
    for ex in load_examples("pad_ufes20", "test", data_dir, taxonomy=sub):
        assert ex["node"] == sub.id(ex["label"]) and ex["path"] == sub.path(ex["node"])
    source = tfds.data_source("pad_ufes20", split="test", data_dir=str(data_dir))
    assert len(source) == len(read["test"])


def test_fractional_training_subset_reads_back(pad):
    builder, read, _ = pad
    data_dir = Path(builder.data_dir).parents[1]
    full = {ex["id"] for ex in read["train"]}
    half = load_examples("pad_ufes20", "train", data_dir, fraction=0.5, seed=3)
    assert {ex["id"] for ex in half} < full and len(half) == round(0.5 * len(full))
    again = load_examples("pad_ufes20", "train", data_dir, fraction=0.5, seed=3)
    assert [ex["id"] for ex in again] == [ex["id"] for ex in half]
    fifth = {ex["id"] for ex in load_examples("pad_ufes20", "train", data_dir, fraction=0.2, seed=3)}
    assert fifth <= {ex["id"] for ex in half}


@pytest.fixture(scope="module")
def derm7pt(tmp_path_factory):
    root = tmp_path_factory.mktemp("derm7pt")
    man = root / "manual"
    diagnoses = ("clark nevus", "melanoma (less than 0.76 mm)", "seborrheic keratosis", "reed or spitz nevus",
                 "basal cell carcinoma", "blue nevus", "melanosis", "dermal nevus", "vascular lesion")
    rows = []
    for i, dx in enumerate(diagnoses):
        clinic, derm = f"Aal/Aal{i:03d}.jpg", f"Aal/Aal{i:03d}d.jpg"
        _image(man / "images" / clinic, 2 * i)
        _image(man / "images" / derm, 2 * i + 1)
        rows.append(dict(case_num=str(i + 1), diagnosis=dx, seven_point_score="1", pigment_network="typical",
                         streaks="absent", pigmentation="absent", regression_structures="absent",
                         dots_and_globules="absent", blue_whitish_veil="absent", vascular_structures="absent",
                         level_of_diagnostic_difficulty="low", elevation="flat", location="back", sex="female",
                         clinic=clinic, derm=derm, notes=""))
    _csv(man / "meta" / "meta.csv", rows)
    for split, idx in (("train", [0, 1, 2, 3]), ("valid", [4, 5]), ("test", [6, 7, 8])):
        _csv(man / "meta" / f"{split}_indexes.csv", [{"indexes": str(i)} for i in idx])
    return (*_build("derm7pt", root, man), rows)


def test_derm7pt_views_are_samples_of_one_case(derm7pt, tax):
    _, read, rows = derm7pt
    split_of = _split_of(read)
    assert len(split_of) == 2 * len(rows)
    expected = {**{str(i + 1): "train" for i in range(4)}, "5": "validation", "6": "validation",
                **{str(i + 1): "test" for i in range(6, 9)}}
    for case, split in expected.items():
        assert split_of[f"{case}_clinic"] == split_of[f"{case}_derm"] == split
    views = Counter(ex["view"] for exs in read.values() for ex in exs)
    assert views == Counter({"clinic": 9, "derm": 9})
    by_id = {ex["id"]: ex for exs in read.values() for ex in exs}
    assert by_id["1_derm"]["label"] == "dysplastic nevus"
    assert tax.name(tax.parent(by_id["2_clinic"]["node"])) == "invasive melanoma"
    for ex in by_id.values():
        _assert_example(ex, tax, "derm7pt")


@pytest.fixture(scope="module")
def derm12345(tmp_path_factory):
    root = tmp_path_factory.mktemp("derm12345")
    man = root / "manual"
    hierarchy = {
        "sk": ("nonmelanocytic", "benign", "keratinocytic", "keratinocytic", "seborrheic_keratosis"),
        "mel": ("melanocytic", "malignant", "melanoma", "melanoma", "melanoma"),
        "cb": ("melanocytic", "benign", "banal", "compound", "compound"),
        "bd": ("nonmelanocytic", "malignant", "keratinocytic", "keratinocytic", "bowen_disease"),
        # a code the table lacks: its sub_class still finds the node
        "xsk": ("nonmelanocytic", "benign", "keratinocytic", "keratinocytic", "seborrheic_keratosis"),
    }
    rows = {"train": [], "test": []}
    for i in range(20):
        split = "test" if i % 5 == 0 else "train"
        label = list(hierarchy)[i % 5]
        image_id = f"{split}_{i:05d}"
        folder = "derm12345_test" if split == "test" else f"derm12345_train_part_{1 + i % 2}"
        _image(man / folder / label / f"{image_id}.jpg", i)
        sup, mal, m1, m2, sub = hierarchy[label]
        rows[split].append(dict(image_id=image_id, split=split, super_class=sup, malignancy=mal,
                                main_class_1=m1, main_class_2=m2, sub_class=sub, label=label))
    for split, r in rows.items():
        _csv(man / f"derm12345_metadata_{split}.csv", r)
    return (*_build("derm12345", root, man), rows)


def test_derm12345_codes_and_hierarchy_fallback(derm12345, tax):
    _, read, rows = derm12345
    assert sorted(ex["id"] for ex in read["test"]) == sorted(r["image_id"] for r in rows["test"])
    assert len(read["train"]) + len(read["validation"]) == len(rows["train"])
    assert 1 <= len(read["validation"]) <= 8
    by_raw = {ex["raw_label"]: ex for exs in read.values() for ex in exs}
    assert by_raw["xsk"]["label"] == by_raw["sk"]["label"] == "seborrheic keratosis"
    assert by_raw["bd"]["label"] == "bowens disease" and by_raw["bd"]["malignancy"] == "precancerous_in_situ"
    assert by_raw["cb"]["label"] == "compound nevus"
    for exs in read.values():
        for ex in exs:
            _assert_example(ex, tax, "derm12345")


# Real DermNet file names: the Kaggle mirror's `<name>-<idx>.jpg`, with capitals, and DermNet
# NZ's chapter-numbered names, glued (`03angularcheilitis-1`) or CamelCase (`07Acne081101`).
DERMNET_FILES = {
    "basal-cell-carcinoma-face-3.jpg": "basal cell carcinoma",
    "seborrheic-keratoses-ruff-7.jpg": "seborrheic keratosis",
    "Psoriasis-Chronic-Plaque-12.jpg": "psoriasis",
    "tinea-body-127.jpg": "tinea corporis",
    "tinea-groin-4.jpg": "tinea cruris",
    "onycholysis-2.jpg": "onycholysis",
    "dermatitis-herpetiformis-5.jpg": "dermatitis herpetiformis",
    "sunburn-3.jpg": "sunburn",
    "03angularcheilitis-1.jpg": "cheilitis",
    "07Acne081101.jpg": "acne",
    "03EczemaExcoriated.jpg": "eczema",
    "13Intertrigo2.jpg": "intertrigo",
    "08SebDerm11.jpg": "seborrheic dermatitis",
    "melanoma-mimic-2.jpg": None,              # reviewed: no single diagnosis
    "hair-loss-unknown-1.jpg": None,           # not in the table; "hair" is reviewed as no home
}


@pytest.fixture(scope="module")
def dermnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("dermnet")
    man = root / "manual"
    for i, name in enumerate(DERMNET_FILES):
        for split in ("train", "test"):
            _image(man / split / "Assorted Category Photos" / name, i)
    _image(man / "train" / "Assorted Category Photos" / "12345.jpg", 99)   # no name at all
    return _build("dermnet", root, man)


def test_dermnet_names_from_files(dermnet, tax):
    builder, read = dermnet
    by_file = {}
    for exs in read.values():
        for ex in exs:
            _assert_example(ex, tax, "dermnet")
            by_file[ex["id"].split("/")[-1]] = ex
    for name, label in DERMNET_FILES.items():
        stem = Path(name).stem
        assert (by_file[stem]["label"] if stem in by_file else None) == label, name
    assert {ex["category"] for ex in by_file.values()} == {"Assorted Category Photos"}
    assert len(read["test"]) == 13 and len(read["train"]) + len(read["validation"]) == 13
    # every file is mapped, reported unmapped with its count, or reported as unparsed
    report = builder.report
    assert report.unparsed == ["train/Assorted Category Photos/12345.jpg"]
    assert report.unmapped == Counter({"melanoma mimic": 2, "hair loss unknown": 2})
    assert report.num_mapped + report.num_unmapped + len(report.unparsed) == 2 * len(DERMNET_FILES) + 1
    assert report.mapped["angularcheilitis"] == 2 and report.mapped["acne"] == 2


@pytest.fixture(scope="module")
def fitz(tmp_path_factory):
    if not FITZ_CSV.is_file():
        pytest.skip(f"{FITZ_CSV} not present")
    with open(FITZ_CSV, newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, [r for _, r in zip(range(240), reader)]
    root = tmp_path_factory.mktemp("fitz")
    man = root / "manual"
    for i, r in enumerate(rows):
        _image(man / "images" / f"{r['md5hash']}.jpg", i, size=8)
    _csv(man / "fitzpatrick17k.csv", rows, columns)
    return (*_build("fitzpatrick17k", root, man), rows)


def test_fitzpatrick17k_real_rows(fitz, tax):
    _, read, rows = fitz
    sizes = {s: len(read[s]) for s in SPLIT_NAMES}
    assert sum(sizes.values()) == len(rows)
    for s, frac in zip(SPLIT_NAMES, (0.6, 0.2, 0.2)):
        assert abs(sizes[s] - frac * len(rows)) <= 2
    by_id = {ex["id"]: ex for exs in read.values() for ex in exs}
    for r in rows:
        ex = by_id[r["md5hash"]]
        _assert_example(ex, tax, "fitzpatrick17k")
        assert ex["label"] == r["label"] and ex["qc"] == r["qc"]
        scale = int(r["fitzpatrick_scale"])
        assert ex["skin_type"] == (scale if 1 <= scale <= 6 else -1)
        three = r["three_partition_label"].replace("-", "_")
        assert ex["malignancy"] == three or r["label"] == "actinic keratosis"


DDI_DISEASES = ("melanoma-in-situ", "basal-cell-carcinoma", "seborrheic-keratosis-irritated", "verruca-vulgaris",
                "melanocytic-nevi", "squamous-cell-carcinoma-in-situ", "epidermal-cyst", "mystery-disease")


def _ddi_folder(man: Path, n: int = 16) -> list[dict]:
    rows = []
    for i in range(n):
        f = f"{i + 1:06d}.png"
        _image(man / "images" / f, i)
        disease = DDI_DISEASES[i % len(DDI_DISEASES)]
        rows.append(dict(DDI_ID=str(i + 1), DDI_file=f, skin_tone=("12", "34", "56")[i % 3],
                         malignant=str(disease in ("melanoma-in-situ", "basal-cell-carcinoma")), disease=disease))
    _csv(man / "ddi_metadata.csv", rows)
    return rows


@pytest.fixture(scope="module")
def ddi(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddi")
    rows = _ddi_folder(root / "manual")
    return (*_build("ddi", root, root / "manual"), rows)


def test_ddi(ddi, tax):
    builder, read, rows = ddi
    by_id = {ex["id"]: ex for exs in read.values() for ex in exs}
    assert len(by_id) == 14 and builder.report.unmapped == Counter({"mystery-disease": 2})
    for r in rows:
        if r["disease"] == "mystery-disease":
            continue
        ex = by_id[Path(r["DDI_file"]).stem]
        _assert_example(ex, tax, "ddi")
        assert ex["skin_tone"] == int(r["skin_tone"]) and ex["skin_type"] == -1
        assert (ex["malignancy"] in ("malignant", "precancerous_in_situ")) == (r["malignant"] == "True") or \
            r["disease"] == "squamous-cell-carcinoma-in-situ"
    assert by_id["000006"]["label"] == "bowens disease"


@pytest.fixture(scope="module")
def skincon(tmp_path_factory):
    root = tmp_path_factory.mktemp("skincon")
    man = root / "manual"
    fitz_rows, ann = [], []
    labels = ("psoriasis", "melanoma", "acne vulgaris", "basal cell carcinoma")
    columns = list(SKINCON_COLUMNS.values())
    for i in range(12):
        md5 = f"{i:032x}"
        _image(man / "images" / f"{md5}.jpg", i)
        fitz_rows.append(dict(md5hash=md5, fitzpatrick_scale=str(1 + i % 6), fitzpatrick_centaur="2",
                              label=labels[i % 4], nine_partition_label="x", three_partition_label="y",
                              qc="", url="", url_alphanum=""))
        ann.append({"": str(i), "ImageID": f"{md5}.jpg", **{c: str(int(c in ("Plaque", "Scale") and i % 2 == 0))
                                                            for c in columns},
                    "Do not consider this image": "1" if i == 11 else "0"})
    _csv(man / "fitzpatrick17k.csv", fitz_rows)
    # The names and header of the files skincon-dataset.github.io/files/ serves: an unnamed index
    # column, ImageID, the 48 concepts, the exclusion flag.
    _csv(man / "annotations_fitzpatrick17k.csv", ann, ["", "ImageID", *columns, "Do not consider this image"])
    ddi_rows = _ddi_folder(man, n=10)
    _csv(man / "annotations_ddi.csv",
         [{"": str(i), "ImageID": r["DDI_file"], **{c: str(int(c == "Nodule")) for c in columns},
           "Do not consider this image": "1" if i == 9 else "0"} for i, r in enumerate(ddi_rows)])
    return _build("skincon", root, man)


def test_skincon_concepts_on_both_sources(skincon, tax):
    builder, read = skincon
    exs = [ex for v in read.values() for ex in v]
    # DDI rows 0..8 kept (row 9 flagged); row 7's "mystery-disease" has no node: reported, not kept
    assert Counter(ex["source"] for ex in exs) == Counter({"fitzpatrick17k": 11, "ddi": 8})
    assert builder.report.excluded == Counter({"fitzpatrick17k: Do not consider this image": 1,
                                               "ddi: Do not consider this image": 1})
    assert builder.report.unmapped == Counter({"mystery-disease": 1})
    assert builder.report.num_mapped == 19
    for ex in exs:
        _assert_example(ex, tax, "skincon")
        n = int(ex["id"].split("/")[1], 16) if ex["source"] == "fitzpatrick17k" else None
        expected = ["nodule"] if ex["source"] == "ddi" else (["plaque", "scale"] if n % 2 == 0 else [])
        assert ex["concepts"] == expected
        assert set(ex["concepts"]) <= set(SKINCON_COLUMNS)


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    root = tmp_path_factory.mktemp("omni")
    man = root / "manual"
    qa = man / "QA_information" / "Open-access"
    entries = []
    answers = ("Melanoma", "Melanocytic nevi", "Normal", "Basal cell carcinoma")
    for i in range(8):
        img = f"Images/ISIC2018/ISIC_{i:07d}.jpg"
        _image(man / img, i)
        entries.append(dict(question_id=f"isic_{i}", dataset="ISIC2018", modality_type="Dermoscopy",
                            question_type="Disease Diagnosis" if i < 6 else "Modality Recognition",
                            question="What disease is shown in this image?", gt_answer=answers[i % 4],
                            image_path=img, option_A=answers[i % 4], option_B="Dermatofibroma",
                            option_C="Psoriasis", option_D="Vitiligo"))
    # As in the released files: an answer that differs from its option by a trailing period and
    # case, and one whose answer is none of its options.
    entries[3]["gt_answer"] = "basal cell carcinoma."
    _image(man / "Images/ISIC2018/ISIC_0000100.jpg", 100)
    entries.append(dict(entries[0], question_id="isic_bad", gt_answer="Eczema",
                        image_path="Images/ISIC2018/ISIC_0000100.jpg"))
    qa.mkdir(parents=True)
    (qa / "ISIC2018.json").write_text(json.dumps(entries))
    (qa / "Chest CT Scan.json").write_text(json.dumps([dict(entries[0], image_path="missing.png")]))
    return (*_build("omnimedvqa_derm", root, man), entries)


def test_omnimedvqa_derm_keeps_questions(omni, tax):
    builder, read, entries = omni
    assert set(read) == {"test"}
    exs = {ex["id"]: ex for ex in read["test"]}
    assert sorted(exs) == sorted(f"ISIC2018/isic_{i}" for i in range(6))
    first = exs["ISIC2018/isic_0"]
    assert first["answer"] == "Melanoma" and first["options"][0] == "Melanoma" and len(first["options"]) == 4
    assert first["label"] == "melanoma" and first["question"].startswith("What disease")
    assert exs["ISIC2018/isic_1"]["label"] == "nevocytic nevus"
    normal = exs["ISIC2018/isic_2"]
    assert normal["label"] == "" and normal["node"] == -1 and normal["path"] == []
    assert builder.report.unmapped == Counter({"Normal": 1})
    bcc = exs["ISIC2018/isic_3"]
    assert bcc["answer"] == bcc["options"][0] == "Basal cell carcinoma" and bcc["label"] == "basal cell carcinoma"
    assert "ISIC2018/isic_bad" not in exs
    assert builder.report.excluded == Counter({"gt_answer matches none of its options": 1})


# ---- bad input ---------------------------------------------------------------------------------

def test_corrupt_image_fail_and_skip(tmp_path):
    man = tmp_path / "manual"
    rows = _ddi_folder(man, n=8)
    bad = man / "images" / rows[2]["DDI_file"]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(BadImageError, match=str(bad)):
        BUILDERS["ddi"](data_dir=str(tmp_path / "fail"), manual_dir=str(man)).download_and_prepare()
    builder = BUILDERS["ddi"](data_dir=str(tmp_path / "skip"), manual_dir=str(man), on_bad_image="skip")
    builder.download_and_prepare()
    report = load_report("ddi", tmp_path / "skip")
    assert len(report.bad_images) == 1 and str(bad) in report.bad_images[0]
    kept = sum(len(load_examples("ddi", s, tmp_path / "skip")) for s in builder.info.splits)
    assert kept == 8 - 1 - 1  # one corrupt, one unmapped disease


def test_missing_image_names_the_file(tmp_path):
    man = tmp_path / "manual"
    rows = _ddi_folder(man, n=4)
    (man / "images" / rows[0]["DDI_file"]).unlink()
    with pytest.raises(BadImageError, match=rows[0]["DDI_file"]):
        BUILDERS["ddi"](data_dir=str(tmp_path / "d"), manual_dir=str(man)).download_and_prepare()


def test_missing_column_is_named(tmp_path):
    man = tmp_path / "manual"
    _image(man / "images" / "PAT_1_1_1.png", 0)
    _csv(man / "metadata.csv", [{c: "1" for c in PAD_COLUMNS if c != "diagnostic"}])
    with pytest.raises(DatasetFormatError, match=r"metadata\.csv.*diagnostic"):
        BUILDERS["pad_ufes20"](data_dir=str(tmp_path / "d"), manual_dir=str(man)).download_and_prepare()


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetFormatError, match=str(missing)):
        BUILDERS["ham10000"](data_dir=str(tmp_path / "d"), manual_dir=str(missing)).download_and_prepare()
    with pytest.raises(DatasetFormatError, match="ham10000"):
        BUILDERS["ham10000"](data_dir=str(tmp_path / "d")).download_and_prepare()


def test_skincon_errors_name_the_culprit(tmp_path):
    man = tmp_path / "manual"
    man.mkdir()
    with pytest.raises(DatasetFormatError, match=r"no annotation file.*annotations_fitzpatrick17k\.csv.*"
                                                 r"annotations_ddi\.csv"):
        BUILDERS["skincon"](data_dir=str(tmp_path / "d"), manual_dir=str(man)).download_and_prepare()
    rows = _ddi_folder(man, n=2)
    _csv(man / "annotations_ddi.csv", [{"": "0", "ImageID": "999999.png", **{c: "0" for c in SKINCON_COLUMNS.values()},
                                        "Do not consider this image": "0"}])
    with pytest.raises(DatasetFormatError, match=r"annotations_ddi\.csv row 2: ImageID '999999\.png' is not in "
                                                 r".*ddi_metadata\.csv"):
        BUILDERS["skincon"](data_dir=str(tmp_path / "d"), manual_dir=str(man)).download_and_prepare()
    assert rows


def test_on_bad_image_is_validated():
    with pytest.raises(ValueError, match="on_bad_image"):
        BUILDERS["ddi"](on_bad_image="ignore")


# ---- the split rule ----------------------------------------------------------------------------

def test_split_rule_cases():
    keys = [f"s{i}" for i in range(200)]
    groups = [f"p{i // 4}" for i in range(200)]
    none = splits.assign_splits(keys, [None] * 200, groups, seed=3)
    counts = Counter(none)
    assert abs(counts["train"] - 120) <= 4 and abs(counts["validation"] - 40) <= 4
    official = ["train" if i < 152 else "test" for i in range(200)]
    two = splits.assign_splits(keys, official, groups, seed=3)
    assert all(s == "test" for s in two[152:]) and abs(Counter(two[:152])["validation"] - 38) <= 4
    three = ["train", "valid", "test", "val"] * 50
    assert splits.assign_splits(keys, three, groups) == [splits.normalize_split_name(s) for s in three]
    for result in (none, two):
        seen: dict[str, str] = {}
        for g, s in zip(groups, result):
            assert seen.setdefault(g, s) == s


def test_split_rule_is_deterministic_and_order_free():
    keys = [f"s{i}" for i in range(60)]
    groups = [f"p{i // 3}" for i in range(60)]
    a = dict(zip(keys, splits.assign_splits(keys, [None] * 60, groups, seed=7)))
    b = dict(zip(keys[::-1], splits.assign_splits(keys[::-1], [None] * 60, groups[::-1], seed=7)))
    c = dict(zip(keys, splits.assign_splits(keys, [None] * 60, groups, seed=8)))
    assert a == b and a != c


def test_split_rule_rejects_bad_input():
    with pytest.raises(ValueError, match="duplicate sample id 'a'"):
        splits.assign_splits(["a", "a"], [None, None])
    with pytest.raises(ValueError, match="unknown split name 'holdout'"):
        splits.assign_splits(["a", "b"], ["train", "holdout"])
    with pytest.raises(ValueError, match="'b' has no official split"):
        splits.assign_splits(["a", "b"], ["train", None])


def test_train_subsets_nested_and_deterministic():
    ids = [f"x{i}" for i in range(1000)]
    subsets = {f: set(splits.train_subset(ids, f, seed=1)) for f in splits.TRAIN_FRACTIONS}
    assert [len(subsets[f]) for f in splits.TRAIN_FRACTIONS] == [10, 50, 100, 200]
    assert subsets[0.01] <= subsets[0.05] <= subsets[0.1] <= subsets[0.2]
    assert set(splits.train_subset(ids, 0.1, seed=1)) == subsets[0.1]
    assert set(splits.train_subset(ids, 0.1, seed=2)) != subsets[0.1]
    shuffled = ids[::-1]
    assert {shuffled[i] for i in splits.train_subset(shuffled, 0.1, seed=1)} == {ids[i] for i in subsets[0.1]}
    assert splits.train_subset(ids[:3], 0.01) and splits.train_subset([], 0.5) == []
    with pytest.raises(ValueError, match="fraction"):
        splits.train_subset(ids, 0.0)
