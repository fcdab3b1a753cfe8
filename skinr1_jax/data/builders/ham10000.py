"""HAM10000 (dermoscopy, 7 `dx` classes), with the ISIC 2018 Task 3 test set when supplied."""

from __future__ import annotations

from pathlib import Path

from skinr1_jax.data.builders.common import (
    DatasetFormatError, DermBuilder, ImageIndex, RawRecord, find_file, read_table)

_ONE_HOT = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
_TEST_GT = ("ISIC2018_Task3_Test_GroundTruth.csv",
            "ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv")


class Ham10000(DermBuilder):
    """HAM10000 training images; ISIC 2018 Task 3 test images as the official test split."""

    name = "ham10000"
    LABEL_MAP = "ham10000"
    DESCRIPTION = "HAM10000: 10,015 dermoscopic images of 7 diagnoses (Tschandl et al., 2018)."
    HOMEPAGE = "https://doi.org/10.7910/DVN/DBW86T"
    CITATION = "Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset. Sci Data 5, 180161 (2018)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download HAM10000 from the Harvard Dataverse (doi:10.7910/DVN/DBW86T, CC BY-NC 4.0) and
    unpack into manual_dir:
      HAM10000_metadata.csv (or .tab, or HAM10000_metadata with no extension; comma- or
        tab-separated)                     columns lesion_id,image_id,dx,dx_type,age,sex,localization
      HAM10000_images_part_1/ISIC_*.jpg, HAM10000_images_part_2/ISIC_*.jpg
    Optional official test set (ISIC 2018 Task 3, challenge.isic-archive.com):
      ISIC2018_Task3_Test_GroundTruth.csv  one-hot image,MEL,NV,BCC,AKIEC,BKL,DF,VASC (or image_id,dx)
      ISIC2018_Task3_Test_Images/ISIC_*.jpg
    Without the test set, the images are split 60/20/20 by lesion_id.
    """

    def _read_records(self, root: Path) -> list[RawRecord]:
        meta = find_file(root, ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata"),
                         "HAM10000 metadata")
        images = ImageIndex(root)
        gt = next((root / n for n in _TEST_GT if (root / n).is_file()), None)
        split = "train" if gt is not None else None
        records = [
            RawRecord(id=r["image_id"], image=images.resolve(r["image_id"], str(meta)),
                      raw_label=r["dx"], split=split, group=r["lesion_id"] or None)
            for r in read_table(meta, ("lesion_id", "image_id", "dx"))]
        if gt is not None:
            records += [RawRecord(id=image_id, image=images.resolve(image_id, str(gt)),
                                  raw_label=dx, split="test")
                        for image_id, dx in _read_test_gt(gt)]
        return records


def _read_test_gt(path: Path) -> list[tuple[str, str]]:
    rows = read_table(path, ())
    header = list(rows[0]) if rows else []
    if {"image_id", "dx"} <= set(header):
        return [(r["image_id"], r["dx"]) for r in rows]
    missing = [c for c in ("image", *_ONE_HOT) if c not in header]
    if missing:
        raise DatasetFormatError(f"{path}: missing column(s) {missing}; expected image,{','.join(_ONE_HOT)} "
                                 f"or image_id,dx; found {header}")
    out = []
    for i, r in enumerate(rows):
        hot = [c for c in _ONE_HOT if float(r[c] or 0) >= 0.5]
        if len(hot) != 1:
            raise DatasetFormatError(f"{path}: row {i + 2} ({r['image']}) has {len(hot)} positive classes")
        out.append((r["image"], hot[0].lower()))
    return out
