"""Fitzpatrick17k (clinical atlas photos, 114 conditions, Fitzpatrick skin types)."""

from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds

from skinr1_jax.data.builders.common import (
    DermBuilder, ImageIndex, RawRecord, find_file, parse_skin_type, read_table)


class Fitzpatrick17k(DermBuilder):
    """Fitzpatrick17k; no official split (the authors' holdouts are experiments), so 60/20/20."""

    name = "fitzpatrick17k"
    LABEL_MAP = "fitzpatrick17k"
    EXTRA_FEATURES = {"qc": tfds.features.Text()}
    DESCRIPTION = "Fitzpatrick17k: 16,577 clinical images of 114 conditions with skin types (Groh et al., 2021)."
    HOMEPAGE = "https://github.com/mattgroh/fitzpatrick17k"
    CITATION = ("Groh M, et al. Evaluating deep neural networks trained on clinical images in "
                "dermatology with the Fitzpatrick 17k dataset. CVPR Workshops 2021.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Get fitzpatrick17k.csv from https://github.com/mattgroh/fitzpatrick17k (CC BY-NC-SA 3.0) and the
    images from the source atlases via its `url` column (or the authors' request form), into manual_dir:
      fitzpatrick17k.csv     columns md5hash, fitzpatrick_scale, fitzpatrick_centaur, label, ...
      images/<md5hash>.jpg   (any sub-folder)
    """

    def _read_records(self, root: Path) -> list[RawRecord]:
        meta = find_file(root, ("fitzpatrick17k.csv",), "Fitzpatrick17k metadata")
        images = ImageIndex(root)
        rows = read_table(meta, ("md5hash", "fitzpatrick_scale", "label"))
        return [RawRecord(id=r["md5hash"], image=images.resolve(r["md5hash"], str(meta)), raw_label=r["label"],
                          skin_type=parse_skin_type(r["fitzpatrick_scale"], f"{meta} row {i + 2}"),
                          extra={"qc": r.get("qc", "")})
                for i, r in enumerate(rows)]
