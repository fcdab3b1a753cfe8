"""Label harmonisation: the shipped tables, known mappings, fallbacks and the report."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from skinr1_jax.data.builders import BUILDERS
from skinr1_jax.data.harmonize import (
    HarmonizationReport, LabelMap, LabelMapError, available_maps, check_all_maps, harmonize)
from skinr1_jax.taxonomy import load_default_taxonomy

FITZ_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "fitzpatrick17k" / "fitzpatrick17k.csv"
EXPECTED_MAPS = {"ham10000", "bcn20000", "pad_ufes20", "derm7pt", "derm12345", "dermnet", "ddi",
                 "fitzpatrick17k", "omnimedvqa"}


@pytest.fixture(scope="module")
def tax():
    return load_default_taxonomy()


def _names(tax, h):
    return [tax.name(i) for i in h.path]


def test_every_target_is_a_taxonomy_node(tax):
    assert set(available_maps()) == EXPECTED_MAPS
    check_all_maps(tax)  # raises naming any target the taxonomy lacks
    for name in available_maps():
        for raw, target in LabelMap.load(name).targets().items():
            assert target in tax.names, (name, raw, target)


def test_every_builder_has_its_table():
    for builder in BUILDERS.values():
        assert builder.LABEL_MAP in available_maps(), builder.name


@pytest.mark.parametrize("dataset", sorted(EXPECTED_MAPS))
def test_each_table_entry_harmonises_to_its_target(dataset, tax):
    table = LabelMap.load(dataset)
    for raw, target in table.targets().items():
        for spelling in (raw, raw.upper(), f"  {raw.lower()} "):
            h = harmonize(dataset, spelling, tax)
            assert h is not None and h.label == target, (dataset, spelling)
            assert h.node == tax.id(target) and list(h.path) == tax.path(h.node)
            assert h.malignancy == tax.malignancy(h.node)
    for raw in table.unhomed():
        assert harmonize(dataset, raw, tax) is None, (dataset, raw)


@pytest.mark.parametrize("dataset, raw, leaf, malignancy, ancestor", [
    ("ham10000", "mel", "melanoma", "malignant", "malignant"),
    ("ham10000", "akiec", "actinic keratosis", "precancerous_in_situ", "malignant epidermal"),
    ("ham10000", "bkl", "benign keratosis", "benign", "benign epidermal"),
    ("ham10000", "nv", "nevocytic nevus", "benign", "benign melanocyte"),
    ("pad_ufes20", "SEK", "seborrheic keratosis", "benign", "benign epidermal"),
    ("pad_ufes20", "ACK", "actinic keratosis", "precancerous_in_situ", "malignant epidermal"),
    ("bcn20000", "solar lentigo", "solar lentigo", "benign", "benign keratosis"),
    ("derm7pt", "clark nevus", "dysplastic nevus", "benign", "nevocytic nevus"),
    ("derm7pt", "melanoma (in situ)", "melanoma in situ", "malignant", "melanoma"),
    ("derm12345", "isl", "ink spot lentigo", "benign", "solar lentigo"),
    ("derm12345", "bd", "bowens disease", "precancerous_in_situ", "malignant epidermal"),
    ("ddi", "squamous-cell-carcinoma-in-situ", "bowens disease", "precancerous_in_situ", "malignant"),
    ("ddi", "nodular-melanoma-(nm)", "nodular melanoma", "malignant", "melanoma"),
    ("dermnet", "basal cell carcinoma face", "basal cell carcinoma", "malignant", "malignant epidermal"),
    ("dermnet", "seborrheic keratoses ruff", "seborrheic keratosis", "benign", "benign"),
    ("omnimedvqa", "Actinic keratoses and intraepithelial carcinoma", "actinic keratosis",
     "precancerous_in_situ", "malignant"),
    ("omnimedvqa", "Chickenpox", "varicella", "non_neoplastic", "inflammatory"),
    ("fitzpatrick17k", "psoriasis", "psoriasis", "non_neoplastic", "inflammatory"),
])
def test_known_cases(tax, dataset, raw, leaf, malignancy, ancestor):
    h = harmonize(dataset, raw, tax)
    names = _names(tax, h)
    assert names[-1] == leaf and h.label == leaf
    assert ancestor in names[:-1] or (ancestor == leaf)
    assert h.malignancy == malignancy


@pytest.mark.parametrize("dataset, raw", [
    ("bcn20000", "other"), ("derm7pt", "miscellaneous"), ("omnimedvqa", "Normal"),
    ("dermnet", "hair loss"), ("ham10000", "melanoma"), ("pad_ufes20", "BOD"), ("ddi", ""),
])
def test_unhomed_or_unknown_labels_give_none(tax, dataset, raw):
    assert harmonize(dataset, raw, tax) is None


# Diagnoses of real DermNet file names (Kaggle mirror `<name>-<idx>.jpg` and DermNet NZ's
# `<chapter><CamelCase><idx>.jpg`, as `dermnet.diagnosis_from_stem` reads them), with the node
# each must reach: the taxonomy extensions exist for these.
DERMNET_DIAGNOSES = {
    "angularcheilitis": "cheilitis", "perleche": "cheilitis", "seb derm": "seborrheic dermatitis",
    "lsa": "lichen sclerosus", "tinea groin": "tinea cruris", "tinea face": "tinea faciei",
    "tinea hand dorsum": "tinea manuum", "tinea foot webs": "tinea pedis", "tinea body": "tinea corporis",
    "tinea scalp": "tinea capitis", "tinea versicolor": "tinea versicolor", "tinea nail": "onychomycosis",
    "tinea incognito": "tinea corporis", "kerion": "tinea capitis", "onycholysis": "onycholysis",
    "intertrigo": "intertrigo", "dermatitis herpetiformis": "dermatitis herpetiformis",
    "sunburn": "sunburn", "erythema ab igne": "erythema ab igne", "puppp": "polymorphic eruption of pregnancy",
    "flea bites": "arthropod bite", "spider bite": "arthropod bite", "scabies": "scabies",
    "head lice": "pediculosis", "pubic lice": "pediculosis", "leishmaniasis": "cutaneous leishmaniasis",
    "monkey pox": "mpox", "small pox": "smallpox", "scarlet fever": "scarlet fever",
    "kawasaki syndrome": "kawasaki disease", "hand foot mouth disease": "viral exanthem",
    "chicken pox": "varicella", "schamberg disease": "pigmented purpuric dermatosis",
    "chondrodermatitis nodularis": "chondrodermatitis nodularis helicis", "grovers disease": "grover disease",
    "furuncles carbuncles": "furuncle", "diabetic bullae": "bullosis diabeticorum",
    "beaus lines": "nail dystrophy", "koilonychia": "nail dystrophy", "chronic paronychia": "paronychia",
    "leprosy": "leprosy", "reiter syndrome": "reactive arthritis", "erythrasma": "erythrasma",
    "pitted keratolysis": "pitted keratolysis", "corns": "callus", "chilblains perniosis": "chilblains",
    "idiopathic guttate hypomelanosis": "idiopathic guttate hypomelanosis",
    "rocky mountain spotted fever": "rocky mountain spotted fever", "hirsutism": "hirsutism",
    "raynaud disease": "raynaud phenomenon", "rheumatoid nodule": "rheumatoid nodule", "gout": "gout",
    "granuloma faciale": "granuloma faciale", "atrophy blanche": "atrophie blanche",
    "lichen nitidus": "lichen nitidus", "androgenic alopecia": "androgenetic alopecia",
    "traction alopecia": "traction alopecia", "telogen effluvium": "telogen effluvium",
    "accessory nipple": "accessory nipple", "cylindroma": "cylindroma",
    "granular cell tumor": "granular cell tumor", "arsenical keratoses": "arsenical keratosis",
    "atypical fibroxanthoma": "atypical fibroxanthoma", "pemphigus foliaceous": "pemphigus foliaceus",
    "dermatosis papulosa nigra": "seborrheic keratosis", "benign familial chronic pemphigus": "hailey hailey disease",
    "eczema herpeticum": "herpes simplex", "urticaria vasculitis": "cutaneous vasculitis",
    "staphylococcal scalded skin syndrome": "staphylococcal scalded skin syndrome",
    "basal cell carcinoma pigmented": "pigmented basal cell carcinoma", "metastasis": "cutaneous metastasis",
    "paget disease": "malignant epidermal", "histiocytosis": "langerhans cell histiocytosis",
    "stucco keratoses": "seborrheic keratosis", "bowenoid papulosis": "bowens disease",
    "poison ivy": "allergic contact dermatitis", "seborrheic keratoses ruff": "seborrheic keratosis",
}
DERMNET_REVIEWED_UNHOMED = ("melanoma mimic", "cutaneous horn", "hyperkeratosis", "desquamation", "img", "normal")


def test_real_dermnet_diagnoses_have_homes(tax):
    for raw, node in DERMNET_DIAGNOSES.items():
        h = harmonize("dermnet", raw, tax)
        assert h is not None and h.label == node, (raw, h)
        assert h.malignancy is not None, raw
    assert tax.malignancy(tax.id("arsenical keratosis")) == "precancerous_in_situ"
    assert tax.malignancy(tax.id("atypical fibroxanthoma")) == "malignant"
    assert tax.malignancy(tax.id("cylindroma")) == "benign"
    unhomed = set(LabelMap.load("dermnet").unhomed())
    for raw in DERMNET_REVIEWED_UNHOMED:
        assert raw in unhomed and harmonize("dermnet", raw, tax) is None, raw


def test_fixed_tables_do_not_guess(tax):
    # HAM10000 is a closed code set: a full disease name is not one of its codes.
    assert LabelMap.load("ham10000").fallback == "none"
    assert harmonize("ham10000", "melanoma", tax) is None
    assert harmonize("dermnet", "melanoma", tax).label == "melanoma"


def test_fallbacks_find_coarser_descriptions(tax):
    h = harmonize("derm12345", "zz", tax, fallbacks=("no such thing", "seborrheic_keratosis"))
    assert h.label == "seborrheic keratosis"
    assert harmonize("derm12345", "zz", tax, fallbacks=("nothing here",)) is None


def test_report_counts_unmapped_and_no_malignancy(tax):
    table = LabelMap.from_dict({"dataset": "toy", "column": "dx", "labels": {
        "a": "melanoma", "root": tax.name(tax.root), "gone": None}})
    report = HarmonizationReport("toy")
    for raw in ["a", "a", "root", "gone", "x", "x", "x"]:
        harmonize("toy", raw, tax, report=report, table=table)
    assert report.mapped == Counter({"a": 2})
    assert report.no_malignancy == Counter({"root": 1})
    assert report.unmapped == Counter({"x": 3, "gone": 1})
    assert (report.num_mapped, report.num_unmapped, report.num_dropped_no_malignancy) == (2, 4, 1)
    assert "'x' x3" in report.summary() and "dropped for no malignancy" in report.summary()
    again = HarmonizationReport.from_dict(report.as_dict())
    assert again.as_dict() == report.as_dict()


def test_fitzpatrick17k_labels_all_map_with_their_partition(tax):
    if not FITZ_CSV.is_file():
        pytest.skip(f"{FITZ_CSV} not present")
    with open(FITZ_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    report = HarmonizationReport("fitzpatrick17k")
    for r in rows:
        h = harmonize("fitzpatrick17k", r["label"], tax, report=report)
        # The tree files actinic keratosis as precancerous, the CSV as malignant; all else agrees.
        if r["label"] != "actinic keratosis":
            assert h.malignancy == r["three_partition_label"].replace("-", "_"), r["label"]
    assert report.num_unmapped == 0 and report.num_mapped == len(rows) == 16577


def test_bad_tables_are_rejected(tax, tmp_path):
    with pytest.raises(LabelMapError, match="normalise to the same key"):
        LabelMap.from_dict({"dataset": "t", "column": "c", "labels": {"MEL": "melanoma", "mel": "acne"}})
    with pytest.raises(LabelMapError, match="fallback"):
        LabelMap.from_dict({"dataset": "t", "column": "c", "labels": {}, "fallback": "guess"})
    with pytest.raises(LabelMapError, match="missing 'column'"):
        LabelMap.from_dict({"dataset": "t", "labels": {}})
    bad = LabelMap.from_dict({"dataset": "t", "column": "c", "labels": {"a": "no such node"}})
    with pytest.raises(LabelMapError, match="no such node"):
        bad.check(tax)
    with pytest.raises(LabelMapError, match="no such node"):
        harmonize("t", "a", tax, table=bad)
    with pytest.raises(LabelMapError, match="no label map for dataset 'nope'"):
        LabelMap.load("nope")
    broken = tmp_path / "x.json"
    broken.write_text("{not json")
    with pytest.raises(LabelMapError, match=str(broken)):
        LabelMap.from_file(broken)
