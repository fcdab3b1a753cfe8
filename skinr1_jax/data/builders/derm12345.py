"""Derm12345 (dermoscopy, 40 sub-classes in a 5-level hierarchy)."""

from __future__ import annotations

from pathlib import Path

from skinr1_jax.data.builders.common import DermBuilder, ImageIndex, RawRecord, find_file, read_table

# Coarser descriptions tried, in order, when a label code is not in the table.
_HIERARCHY = ("sub_class", "main_class_2", "main_class_1")


class Derm12345(DermBuilder):
    """Derm12345 official train / test files; train is split 75/25 into train / validation."""

    name = "derm12345"
    LABEL_MAP = "derm12345"
    DESCRIPTION = "Derm12345: 12,345 dermoscopic images in 40 sub-classes (Yilmaz et al., 2024)."
    HOMEPAGE = "https://doi.org/10.7910/DVN/DAXZ7P"
    CITATION = ("Yilmaz A, et al. A Large, Multisource Dermatoscopic Skin Lesion Dataset with 40 "
                "Subclasses (DERM12345). Sci Data 11, 1302 (2024).")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download Derm12345 from the Harvard Dataverse (doi:10.7910/DVN/DAXZ7P) into manual_dir:
      derm12345_metadata_train.csv, derm12345_metadata_test.csv (or the Dataverse .tab files)
          columns image_id, label; hierarchy super_class, malignancy, main_class_1, main_class_2, sub_class
      derm12345_train_part_1/<label>/<image_id>.jpg, derm12345_train_part_2/..., derm12345_test/...
    """

    def _read_records(self, root: Path) -> list[RawRecord]:
        images = ImageIndex(root)
        records = []
        for split in ("train", "test"):
            meta = find_file(root, (f"derm12345_metadata_{split}.csv", f"derm12345_metadata_{split}.tab"),
                             f"Derm12345 {split} metadata")
            for r in read_table(meta, ("image_id", "label")):
                records.append(RawRecord(
                    id=r["image_id"], image=images.resolve(r["image_id"], str(meta)), raw_label=r["label"],
                    split=split, group=r.get("patient_id") or None,
                    fallbacks=tuple(r[c] for c in _HIERARCHY if r.get(c))))
        return records
