"""PAD-UFES-20 (smartphone clinical images, 6 `diagnostic` codes)."""

from __future__ import annotations

from pathlib import Path

from skinr1_jax.data.builders.common import (
    DermBuilder, ImageIndex, RawRecord, find_file, parse_skin_type, read_table)


class PadUfes20(DermBuilder):
    """PAD-UFES-20; no official split, so 60/20/20 by seed, grouped by patient_id."""

    name = "pad_ufes20"
    LABEL_MAP = "pad_ufes20"
    DESCRIPTION = "PAD-UFES-20: 2,298 smartphone images of 6 diagnoses (Pacheco et al., 2020)."
    HOMEPAGE = "https://doi.org/10.17632/zr7vgbcyr2.1"
    CITATION = ("Pacheco AGC, et al. PAD-UFES-20: a skin lesion dataset composed of patient data "
                "and clinical images collected from smartphones. Data in Brief 32, 106221 (2020).")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download PAD-UFES-20 from Mendeley Data (doi:10.17632/zr7vgbcyr2.1, CC BY 4.0) and unpack into
    manual_dir:
      metadata.csv     26 columns incl. patient_id, lesion_id, fitspatrick, diagnostic, img_id
      images/imgs_part_1/PAT_*.png ... (any sub-folders; files are found by img_id)
    """

    def _read_records(self, root: Path) -> list[RawRecord]:
        meta = find_file(root, ("metadata.csv",), "PAD-UFES-20 metadata")
        images = ImageIndex(root)
        rows = read_table(meta, ("patient_id", "lesion_id", "diagnostic", "img_id"))
        return [RawRecord(id=Path(r["img_id"]).stem, image=images.resolve(r["img_id"], str(meta)),
                          raw_label=r["diagnostic"], group=r["patient_id"] or None,
                          skin_type=parse_skin_type(r.get("fitspatrick", ""), f"{meta} row {i + 2}"))
                for i, r in enumerate(rows)]
