"""DermNet (clinical atlas images; the diagnosis is read from `<disease-name>-<idx>.jpg`)."""

from __future__ import annotations

import re
from pathlib import Path

import tensorflow_datasets as tfds

from skinr1_jax.data.builders.common import IMAGE_EXTENSIONS, DatasetFormatError, DermBuilder, RawRecord

_NAME = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9-]*?)-(?P<idx>\d+)$")


class Dermnet(DermBuilder):
    """DermNet train/test category folders; files not named `<name>-<digits>` are counted, not used."""

    name = "dermnet"
    LABEL_MAP = "dermnet"
    EXTRA_FEATURES = {"category": tfds.features.Text()}
    DESCRIPTION = "DermNet: ~19.5k clinical images in 23 categories; fine diagnoses from file names."
    HOMEPAGE = "https://www.kaggle.com/datasets/shubhamgoel27/dermnet"
    CITATION = "DermNet NZ image library, https://dermnetnz.org (images (c) DermNet)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the DermNet Kaggle mirror (images (c) DermNet NZ; check its terms) into manual_dir:
      train/<Category Name>/<disease-name>-<idx>.jpg
      test/<Category Name>/<disease-name>-<idx>.jpg
    The diagnosis is the file name before the index, hyphens read as spaces. Train is split
    75/25 into train/validation.
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
                m = _NAME.match(p.stem)
                if m is None:
                    self.report.unparsed.append(str(p.relative_to(root)))
                    continue
                records.append(RawRecord(
                    id=str(p.relative_to(root).with_suffix("")), image=p,
                    raw_label=m["name"].replace("-", " "), split=split,
                    extra={"category": p.parent.name if p.parent != root / split else ""}))
        return records
