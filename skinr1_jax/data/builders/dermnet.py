"""DermNet (clinical atlas images; the diagnosis is read from `<disease-name>-<idx>.jpg`)."""

from __future__ import annotations

import re
from pathlib import Path

import tensorflow_datasets as tfds

from skinr1_jax.data.builders.common import IMAGE_EXTENSIONS, DatasetFormatError, DermBuilder, RawRecord

# Two naming schemes occur in the Kaggle mirror: `<disease-name>-<idx>` (`tinea-body-127`) and
# DermNet NZ's older `<category code><Name><idx>` (`07Acne081101`, `03EczemaExcoriated`,
# `03angularcheilitis-1`), where the leading digits number the atlas chapter, not the disease.
_CODE = re.compile(r"^\d+")
_HYPHENATED = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9-]*?)-(?P<idx>\d+)$")
_GLUED = re.compile(r"^(?P<name>[A-Za-z][A-Za-z-]*?)(?P<idx>\d*)$")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def diagnosis_from_stem(stem: str) -> str | None:
    """The diagnosis a DermNet file name gives, lower-case words; None when it gives none.

    `basal-cell-carcinoma-face-3` -> "basal cell carcinoma face"; `03angularcheilitis-1` ->
    "angularcheilitis" (glued words are the label table's business); `08LichenPlanus12` ->
    "lichen planus" (CamelCase read as words).
    """
    rest = _CODE.sub("", stem.strip())
    m = _HYPHENATED.match(rest) or _GLUED.match(rest)
    if m is None:
        return None
    words = _CAMEL.sub(" ", m["name"]).replace("-", " ")
    return " ".join(words.lower().split()) or None


class Dermnet(DermBuilder):
    """DermNet train/test category folders; files whose name gives no diagnosis are counted
    (`report.unparsed`), not used."""

    name = "dermnet"
    LABEL_MAP = "dermnet"
    EXTRA_FEATURES = {"category": tfds.features.Text()}
    DESCRIPTION = "DermNet: ~19.5k clinical images in 23 categories; fine diagnoses from file names."
    HOMEPAGE = "https://www.kaggle.com/datasets/shubhamgoel27/dermnet"
    CITATION = "DermNet NZ image library, https://dermnetnz.org (images (c) DermNet)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the DermNet Kaggle mirror (images (c) DermNet NZ; check its terms) into manual_dir:
      train/<Category Name>/<disease-name>-<idx>.jpg   (or DermNet NZ's 07Acne081101.jpg)
      test/<Category Name>/<disease-name>-<idx>.jpg
    The diagnosis is the file name before the index, hyphens and CamelCase read as spaces, a
    leading chapter number dropped. Train is split 75/25 into train/validation.
    """

    def _read_records(self, root: Path) -> list[RawRecord]:
        folders = [s for s in ("train", "test") if (root / s).is_dir()]
        if not folders:
            raise DatasetFormatError(f"dermnet: {root} has neither a train/ nor a test/ folder")
        records = []
        for split in folders:
            for p in sorted((root / split).rglob("*")):
                if not (p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
                    continue
                name = diagnosis_from_stem(p.stem)
                if name is None:
                    self.report.unparsed.append(str(p.relative_to(root)))
                    continue
                records.append(RawRecord(
                    id=str(p.relative_to(root).with_suffix("")), image=p,
                    raw_label=name, split=split,
                    extra={"category": p.parent.name if p.parent != root / split else ""}))
        return records
