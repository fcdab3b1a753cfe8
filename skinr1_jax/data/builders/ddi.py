"""DDI, Diverse Dermatology Images (biopsy-proven, skin-tone balanced)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from skinr1_jax.data.builders.common import DermBuilder, ImageIndex, RawRecord, find_file, parse_int, read_table


class Ddi(DermBuilder):
    """DDI; no official split, so 60/20/20. `skin_tone` keeps DDI's own 12 / 34 / 56 groups."""

    name = "ddi"
    LABEL_MAP = "ddi"
    EXTRA_FEATURES = {"skin_tone": tfds.features.Scalar(dtype=np.int32)}
    DESCRIPTION = "DDI: 656 biopsy-proven clinical images across Fitzpatrick groups (Daneshjou et al., 2022)."
    HOMEPAGE = "https://ddi-dataset.github.io"
    CITATION = ("Daneshjou R, et al. Disparities in dermatology AI performance on a diverse, curated "
                "clinical image set. Sci Adv 8(32), eabq6147 (2022).")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Request DDI from Stanford AIMI (research-use agreement) and unpack into manual_dir:
      ddi_metadata.csv     columns DDI_file, skin_tone (12 / 34 / 56), malignant, disease
      images/000001.png ... (any sub-folder)
    DDI gives skin tone only as pairs of Fitzpatrick types, so skin_type is -1 and the pair is in
    the `skin_tone` feature.
    """

    def _read_records(self, root: Path) -> list[RawRecord]:
        meta = find_file(root, ("ddi_metadata.csv",), "DDI metadata")
        images = ImageIndex(root)
        rows = read_table(meta, ("DDI_file", "skin_tone", "disease"))
        return [RawRecord(id=Path(r["DDI_file"]).stem, image=images.resolve(r["DDI_file"], str(meta)),
                          raw_label=r["disease"],
                          extra={"skin_tone": parse_int(r["skin_tone"], where=f"{meta} row {i + 2}")})
                for i, r in enumerate(rows)]
