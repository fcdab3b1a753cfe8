"""BCN20000 (dermoscopy, Hospital Clinic Barcelona) from its training CSV."""

from __future__ import annotations

from pathlib import Path

from skinr1_jax.data.builders.common import DermBuilder, ImageIndex, RawRecord, find_file, read_table


class Bcn20000(DermBuilder):
    """BCN20000 training release; the CSV's `split` column is the official split when present."""

    name = "bcn20000"
    LABEL_MAP = "bcn20000"
    DESCRIPTION = "BCN20000: dermoscopic lesions from Hospital Clinic Barcelona (Combalia et al., 2019)."
    HOMEPAGE = "https://doi.org/10.1038/s41597-024-03387-w"
    CITATION = ("Hernandez-Perez C, et al. BCN20000: Dermoscopic lesions in the wild. "
                "Sci Data 11, 641 (2024).")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the BCN20000 training release (ISIC archive / figshare, CC BY-NC 4.0) into manual_dir:
      bcn_20k_train.csv     columns bcn_filename, diagnosis; optional split, lesion_id
      bcn_20k_train/<bcn_filename>
    With a split column holding train/validation/test those splits are kept; with train and test
    only, train is split 75/25; without one, 60/20/20 by seed (grouped by lesion_id when present).
    """

    def _read_records(self, root: Path) -> list[RawRecord]:
        meta = find_file(root, ("bcn_20k_train.csv",), "BCN20000 metadata")
        images = ImageIndex(root)
        return [RawRecord(id=Path(r["bcn_filename"]).stem, image=images.resolve(r["bcn_filename"], str(meta)),
                          raw_label=r["diagnosis"], split=r.get("split") or None,
                          group=r.get("lesion_id") or None)
                for r in read_table(meta, ("bcn_filename", "diagnosis"))]
