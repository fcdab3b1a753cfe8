"""derm7pt (seven-point checklist dataset): each case's clinical and dermoscopic image."""

from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds

from skinr1_jax.data.builders.common import DatasetFormatError, DermBuilder, RawRecord, find_file, read_table

_SPLIT_FILES = {"train": "meta/train_indexes.csv", "validation": "meta/valid_indexes.csv",
                "test": "meta/test_indexes.csv"}


class Derm7pt(DermBuilder):
    """derm7pt: the clinic and derm views of a case are separate samples sharing group case_num."""

    name = "derm7pt"
    LABEL_MAP = "derm7pt"
    EXTRA_FEATURES = {"view": tfds.features.Text()}
    DESCRIPTION = "derm7pt: 1,011 cases, each with a clinical and a dermoscopic image (Kawahara et al., 2019)."
    HOMEPAGE = "https://derm.cs.sfu.ca"
    CITATION = ("Kawahara J, Daneshvar S, Argenziano G, Hamarneh G. Seven-point checklist and skin "
                "lesion classification using multitask multimodal neural nets. IEEE JBHI 23(2), 2019.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Request derm7pt at https://derm.cs.sfu.ca (research use) and unpack into manual_dir:
      meta/meta.csv                  columns case_num, diagnosis, clinic, derm (+ 7-point criteria)
      meta/train_indexes.csv, meta/valid_indexes.csv, meta/test_indexes.csv   column `indexes`
      images/<clinic path>, images/<derm path>   e.g. images/NEL/Nel026.jpg
    Without the index files the cases are split 60/20/20 by seed, grouped by case_num.
    """

    def _read_records(self, root: Path) -> list[RawRecord]:
        meta = find_file(root, ("meta/meta.csv",), "derm7pt metadata")
        rows = read_table(meta, ("case_num", "diagnosis", "clinic", "derm"))
        split_of = self._official_splits(root, rows)
        records = []
        for i, r in enumerate(rows):
            for view in ("clinic", "derm"):
                records.append(RawRecord(
                    id=f"{r['case_num']}_{view}", image=root / "images" / r[view] if r[view] else None,
                    raw_label=r["diagnosis"], split=split_of.get(i), group=r["case_num"],
                    extra={"view": view}))
        return records

    @staticmethod
    def _official_splits(root: Path, rows: list[dict[str, str]]) -> dict[int, str]:
        """Row position -> split, from the index files (`indexes` = 0-based rows of meta.csv)."""
        present = {s: root / f for s, f in _SPLIT_FILES.items() if (root / f).is_file()}
        if not present:
            return {}
        if len(present) != len(_SPLIT_FILES):
            raise DatasetFormatError(f"derm7pt: found {sorted(str(p) for p in present.values())} "
                                     f"but not all of {sorted(_SPLIT_FILES.values())}")
        by_case = {r["case_num"]: i for i, r in enumerate(rows)}
        out: dict[int, str] = {}
        for split, path in present.items():
            table = read_table(path, ())
            column = next((c for c in ("indexes", "case_num") if table and c in table[0]), None)
            if table and column is None:
                raise DatasetFormatError(f"{path}: missing column 'indexes' (or 'case_num'); found {list(table[0])}")
            for k, t in enumerate(table):
                value = t[column]
                i = int(value) if column == "indexes" and value.isdigit() else by_case.get(value)
                if i is None or not 0 <= i < len(rows):
                    raise DatasetFormatError(f"{path}: row {k + 2} names case {value!r}, not in meta.csv")
                if out.setdefault(i, split) != split:
                    raise DatasetFormatError(f"{path}: case row {i} is in both {out[i]} and {split}")
        missing = [rows[i]["case_num"] for i in range(len(rows)) if i not in out]
        if missing:
            raise DatasetFormatError(f"derm7pt: cases {missing[:5]} are in meta.csv but in no index file")
        return out
