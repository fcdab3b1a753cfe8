"""SkinCon: 48 dermatologist-annotated clinical concepts on Fitzpatrick17k and DDI images."""

from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds

from skinr1_jax.data.builders.common import (
    DatasetFormatError, DermBuilder, ImageIndex, RawRecord, find_file, parse_int, parse_skin_type,
    read_table)
from skinr1_jax.knowledge import SKINCON_COLUMNS

EXCLUDE_COLUMN = "Do not consider this image"
_PARTS = {
    # part: (annotation file spellings, label file, label-file key column, label column)
    # The site's download names (skincon-dataset.github.io/files/...) come first.
    "fitzpatrick17k": (("annotations_fitzpatrick17k.csv", "SKINCON Fitzpatrick17k annotations.csv", "SKINCON Fitzpatric17k annotations.csv",
                        "skincon_fitzpatrick17k.csv", "fitzpatrick17k/annotation.csv"),
                       "fitzpatrick17k.csv", "md5hash", "label"),
    "ddi": (("annotations_ddi.csv", "SKINCON DDI annotations.csv", "skincon_ddi.csv", "DDI/annotation.csv"),
            "ddi_metadata.csv", "DDI_file", "disease"),
}


class Skincon(DermBuilder):
    """SkinCon concept labels joined to their images' diagnoses; no official split, so 60/20/20."""

    name = "skincon"
    LABEL_MAP = "fitzpatrick17k"
    EXTRA_FEATURES = {"source": tfds.features.Text()}
    DESCRIPTION = "SkinCon: 3,886 clinical images densely annotated with 48 concepts (Daneshjou et al., 2022)."
    HOMEPAGE = "https://skincon-dataset.github.io"
    CITATION = ("Daneshjou R, et al. SkinCon: A skin disease dataset densely annotated by domain "
                "experts for fine-grained model debugging and analysis. NeurIPS Datasets and Benchmarks 2022.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the SkinCon annotation files (https://skincon-dataset.github.io) and the images and
    label files of the datasets they annotate, into manual_dir (either part may be absent):
      annotations_fitzpatrick17k.csv   unnamed index, ImageID (<md5hash>.jpg), the 48 concept
                                       columns, "Do not consider this image"
      fitzpatrick17k.csv + images/<md5hash>.jpg   (see the fitzpatrick17k builder)
      annotations_ddi.csv              the same columns, ImageID = DDI_file (000001.png)
      ddi_metadata.csv + images/000001.png ...    (see the ddi builder)
    Rows flagged "Do not consider this image" are left out and counted.
    """

    def _read_records(self, root: Path) -> list[RawRecord]:
        images = ImageIndex(root)
        parts = {p: next((root / n for n in spec[0] if (root / n).is_file()), None) for p, spec in _PARTS.items()}
        if not any(parts.values()):
            raise DatasetFormatError(f"skincon: no annotation file in {root}; expected one of "
                                     f"{[n for spec in _PARTS.values() for n in spec[0]]}")
        records = []
        for part, annotations in parts.items():
            if annotations is not None:
                records += self._part(root, part, annotations, images)
        return records

    def _part(self, root: Path, part: str, annotations: Path, images: ImageIndex) -> list[RawRecord]:
        _, label_file, key_col, label_col = _PARTS[part]
        labels_path = find_file(root, (label_file,), f"skincon: label file of the {part} part")
        labels = {Path(r[key_col]).stem: r for r in read_table(labels_path, (key_col, label_col))}
        rows = read_table(annotations, ("ImageID", *SKINCON_COLUMNS.values()))
        out = []
        for i, r in enumerate(rows):
            where = f"{annotations} row {i + 2}"
            if parse_int(r.get(EXCLUDE_COLUMN, ""), default=0, where=where) == 1:
                self.report.excluded[f"{part}: {EXCLUDE_COLUMN}"] += 1
                continue
            key = Path(r["ImageID"]).stem
            if key not in labels:
                raise DatasetFormatError(f"{where}: ImageID {r['ImageID']!r} is not in {labels_path}")
            meta = labels[key]
            concepts = tuple(c for c, col in SKINCON_COLUMNS.items() if parse_int(r[col], default=0, where=where) == 1)
            skin = parse_skin_type(meta.get("fitzpatrick_scale", ""), str(labels_path))
            out.append(RawRecord(id=f"{part}/{key}", image=images.resolve(r["ImageID"], where),
                                 raw_label=meta[label_col], skin_type=skin, concepts=concepts,
                                 label_map=part, extra={"source": part}))
        return out
