"""Shared machinery of the public-dataset TFDS builders: the common record, file reading with
clear errors, harmonisation, the split rule, bad-image handling and read-back.

TensorFlow is not a dependency: `tfds.features.Image` needs it to encode, so a record stores the
image file's own encoded bytes (checked to decode at build time) as a uint8 Tensor feature, and
`load_examples` decodes them on read. Everything else is Text / Scalar / Tensor features, which
TFDS writes to and reads from `array_record` without TensorFlow.
"""

from __future__ import annotations

import abc
import csv
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from skinr1_jax.data.harmonize import HarmonizationReport, Harmonized, LabelMap, harmonize
from skinr1_jax.data.splits import assign_splits, train_subset
from skinr1_jax.model.image_processing import ImageError, load_image
from skinr1_jax.taxonomy import Taxonomy, load_default_taxonomy

log = logging.getLogger(__name__)

MAX_PATH_LEN = 8            # deepest taxonomy path stored; paths are padded with -1
ON_BAD_IMAGE = ("fail", "skip")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class DatasetFormatError(ValueError):
    """A user-supplied dataset folder does not match the official layout."""


class BadImageError(DatasetFormatError):
    """An image file is missing or cannot be decoded."""


@dataclass
class RawRecord:
    """One sample as read from the official files, before harmonisation."""

    id: str
    image: Path | None                       # None = the metadata names no file
    raw_label: str
    split: str | None = None                 # official split, any spelling; None = none
    group: str | None = None                 # patient / lesion / case key
    skin_type: int = -1
    concepts: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()          # coarser label descriptions (Derm12345 hierarchy)
    label_map: str | None = None             # overrides the builder's table (SkinCon's parts)
    extra: dict[str, Any] = field(default_factory=dict)


def common_features() -> dict[str, tfds.features.FeatureConnector]:
    """The feature spec of the shared Example record (docs/architecture.md)."""
    return {
        "id": tfds.features.Text(),
        "dataset": tfds.features.Text(),
        "image": tfds.features.Tensor(shape=(None,), dtype=np.uint8),   # encoded file bytes
        "label": tfds.features.Text(),            # canonical taxonomy node name ("" = none)
        "node": tfds.features.Scalar(dtype=np.int32),
        "path": tfds.features.Tensor(shape=(MAX_PATH_LEN,), dtype=np.int32),
        "malignancy": tfds.features.Text(),
        "skin_type": tfds.features.Scalar(dtype=np.int32),
        "concepts": tfds.features.Sequence(tfds.features.Text()),
        "raw_label": tfds.features.Text(),
        "group": tfds.features.Text(),
    }


def taxonomy_fingerprint(taxonomy: Taxonomy) -> str:
    """A short hash of node ids, names and parents: stored ids are valid while it matches."""
    spec = "\n".join(f"{n.id}\t{n.name}\t{n.parent}" for n in taxonomy.nodes)
    return hashlib.sha1(spec.encode()).hexdigest()[:16]


# ---- reading the official files ------------------------------------------------------------

def require_dir(root: str | Path | None, dataset: str, instructions: str) -> Path:
    if root is None or str(root) == "":
        raise DatasetFormatError(f"{dataset}: no manual_dir given. {instructions}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetFormatError(f"{dataset}: manual_dir {root} does not exist or is not a "
                                 f"folder. {instructions}")
    return root


def find_file(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of `names` (paths relative to root) that exists; an error listing them all."""
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DatasetFormatError(f"{what} not found in {root}: expected one of {list(names)}")


DELIMITERS = (",", "\t", ";")


def sniff_delimiter(header_line: str) -> str:
    """The delimiter of a table from its header line: the candidate that occurs most often.

    The suffix is no guide: HAM10000's metadata is served as `.csv`, as a Dataverse `.tab` and
    as `HAM10000_metadata` with no extension (tab-separated). Column names contain none of
    these characters, so the most frequent one splits the header; ties (a one-column file)
    read as comma-separated.
    """
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def read_table(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a comma-, tab- or semicolon-separated file (delimiter sniffed from the header,
    whatever the suffix), checking that the `required` columns exist."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            delimiter = sniff_delimiter(f.readline())
            f.seek(0)
            reader = csv.DictReader(f, delimiter=delimiter)
            header = [h.strip().strip('"') for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [{k: (v or "").strip().strip('"') for k, v in row.items() if k is not None}
                    for row in reader]
    except FileNotFoundError:
        raise DatasetFormatError(f"metadata file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetFormatError(f"cannot read metadata file {path}: {e}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetFormatError(f"{path}: missing column(s) {missing}; found {header} "
                                 f"(read as {delimiter!r}-separated)")
    return rows


class ImageIndex:
    """Image files under a folder, found by file name or by stem, whatever the sub-folders."""

    def __init__(self, root: Path):
        self.root = root
        self._by_key: dict[str, list[Path]] = {}
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                self._by_key.setdefault(p.name, []).append(p)
                self._by_key.setdefault(p.stem, []).append(p)

    def find(self, key: str, where: str) -> Path | None:
        """The one file named `key` (or with stem `key`); None when absent."""
        hits = self._by_key.get(key) or self._by_key.get(Path(key).name) or []
        if len(hits) > 1:
            raise DatasetFormatError(f"{where}: image {key!r} is ambiguous: {[str(h) for h in hits]}")
        return hits[0] if hits else None

    def resolve(self, key: str, where: str) -> Path:
        """The file for `key`; when absent, root/key, so the missing-file error names it."""
        return self.find(key, where) or self.root / key


def parse_int(value: str, *, default: int = -1, where: str = "") -> int:
    """'3', '3.0' -> 3; '' / 'nan' / 'NaN' -> default."""
    v = value.strip().lower()
    if v in ("", "nan", "none", "null", "na"):
        return default
    try:
        f = float(v)
    except ValueError:
        raise DatasetFormatError(f"{where}: expected a number, got {value!r}") from None
    return int(f)


def parse_skin_type(value: str, where: str) -> int:
    """Fitzpatrick type 1..6; anything else (-1, blank) is unknown (-1)."""
    t = parse_int(value, where=where)
    return t if 1 <= t <= 6 else -1


# ---- the builder base -----------------------------------------------------------------------

class DermBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the manual-download dermatology builders.

    Subclasses set LABEL_MAP, DESCRIPTION, HOMEPAGE, CITATION, MANUAL_DOWNLOAD_INSTRUCTIONS,
    optionally EXTRA_FEATURES, and implement `_read_records(root) -> list[RawRecord]`.
    Constructor arguments beyond TFDS's: `manual_dir` (else `dl_manager.manual_dir`),
    `on_bad_image` ("fail" raises naming the file; "skip" drops and counts it), `seed` (the
    60/20/20 and 75/25 splits) and `taxonomy` (default: the shipped tree).
    """

    # TFDS looks for a checksums file beside a builder's code via `importlib_resources`, which
    # is not installed; these builders download nothing, so there is no such file to find.
    code_path = None
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    LABEL_MAP: str = ""
    DESCRIPTION: str = ""
    HOMEPAGE: str = ""
    CITATION: str = ""
    EXTRA_FEATURES: Mapping[str, Any] = {}
    # Evaluation-only sources keep samples whose label finds no node (their own answer options
    # carry the task); training sources drop them, counted in the report.
    KEEP_UNMAPPED = False

    def __init__(self, *, manual_dir: str | Path | None = None, on_bad_image: str = "fail",
                 seed: int = 42, taxonomy: Taxonomy | None = None, **kwargs: Any):
        if on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
        self._manual_dir = manual_dir
        self._on_bad_image = on_bad_image
        self._seed = seed
        self._taxonomy = taxonomy
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self.report = HarmonizationReport(self.name)

    @property
    def taxonomy(self) -> Taxonomy:
        if self._taxonomy is None:
            self._taxonomy = load_default_taxonomy()
        return self._taxonomy

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({**common_features(), **self.EXTRA_FEATURES}),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    @abc.abstractmethod
    def _read_records(self, root: Path) -> list[RawRecord]:
        """Every sample of the dataset in its official layout."""

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = self._manual_dir
        if root is None:
            try:
                root = dl_manager.manual_dir
            except AssertionError as e:  # TFDS asserts when the manual folder is absent or empty
                raise DatasetFormatError(f"{self.name}: {e}") from None
        root = require_dir(root, self.name, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        self.report = HarmonizationReport(self.name)
        records = self._harmonized(self._read_records(root))
        records = [r for r in records if self._image_present(r)]
        if not records:
            raise DatasetFormatError(f"{self.name}: no usable samples in {root} ({self.report.summary()})")
        names = assign_splits([r.id for r, _ in records], [r.split for r, _ in records],
                              [r.group for r, _ in records], seed=self._seed)
        by_split: dict[str, list[tuple[RawRecord, Harmonized | None]]] = {}
        for rec, split in zip(records, names):
            by_split.setdefault(split, []).append(rec)
        self._publish_report()
        return {split: self._generate_examples(recs) for split, recs in sorted(by_split.items())}

    def _harmonized(self, records: list[RawRecord]) -> list[tuple[RawRecord, Harmonized | None]]:
        seen: set[str] = set()
        out = []
        for r in records:
            if r.id in seen:
                raise DatasetFormatError(f"{self.name}: duplicate sample id {r.id!r}")
            seen.add(r.id)
            table = LabelMap.load(r.label_map or self.LABEL_MAP)
            h = harmonize(table.dataset, r.raw_label, self.taxonomy, fallbacks=r.fallbacks,
                          report=self.report, table=table)
            if (h is None or h.malignancy is None) and not self.KEEP_UNMAPPED:
                continue
            out.append((r, h))
        return out

    def _image_present(self, item: tuple[RawRecord, Harmonized | None]) -> bool:
        rec = item[0]
        if rec.image is not None and rec.image.is_file():
            return True
        what = "the metadata names no image file" if rec.image is None else f"image file not found: {rec.image}"
        return self._bad_image(f"{self.name}: sample {rec.id!r}: {what}")

    def _bad_image(self, message: str) -> bool:
        if self._on_bad_image == "fail":
            raise BadImageError(message + " (on_bad_image='skip' drops such samples)")
        self.report.bad_images.append(message)
        log.warning("skipping: %s", message)
        self._publish_report()
        return False

    def _publish_report(self) -> None:
        # The metadata dict is written after generation, so keep it current as images are skipped.
        self.info.metadata["harmonization"] = self.report.as_dict()
        self.info.metadata["taxonomy_fingerprint"] = taxonomy_fingerprint(self.taxonomy)

    def _generate_examples(self, records: list[tuple[RawRecord, Harmonized | None]]) -> Iterator[tuple[str, dict]]:
        for rec, h in records:
            data = rec.image.read_bytes()
            try:
                load_image(data, name=str(rec.image))
            except ImageError as e:
                self._bad_image(f"{self.name}: sample {rec.id!r}: {e}")
                continue
            yield rec.id, self._encode(rec, h, data)
        log.info("%s", self.report.summary())

    def _encode(self, rec: RawRecord, h: Harmonized | None, data: bytes) -> dict[str, Any]:
        path = list(h.path) if h is not None else []
        if len(path) > MAX_PATH_LEN:
            raise DatasetFormatError(f"{self.name}: taxonomy path of {h.label!r} has {len(path)} "
                                     f"nodes; MAX_PATH_LEN is {MAX_PATH_LEN}")
        padded = np.full(MAX_PATH_LEN, -1, np.int32)
        padded[:len(path)] = path
        return {
            "id": rec.id, "dataset": self.name,
            "image": np.frombuffer(data, np.uint8),
            "label": h.label if h is not None else "",
            "node": h.node if h is not None else -1,
            "path": padded,
            "malignancy": (h.malignancy or "") if h is not None else "",
            "skin_type": rec.skin_type,
            "concepts": list(rec.concepts),
            "raw_label": rec.raw_label,
            "group": rec.group or "",
            **rec.extra,
        }


# ---- reading back ----------------------------------------------------------------------------

def _text(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.dtype == object:
        return [_text(x) for x in v]
    if isinstance(v, list):
        return [_text(x) for x in v]
    return v


def decode_record(raw: Mapping[str, Any], taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    """A stored record -> the Example dict (image decoded to uint8[H, W, 3]).

    With `taxonomy`, node and path are recomputed from the stored label name, so data built
    under an older taxonomy stays consistent with the current one.
    """
    ex = {k: _text(v) for k, v in raw.items()}
    ex["image"] = load_image(bytes(np.asarray(raw["image"], np.uint8)), name=f"record {ex['id']!r}")
    ex["node"] = int(ex["node"])
    ex["skin_type"] = int(ex["skin_type"])
    ex["path"] = [int(i) for i in np.asarray(ex["path"]) if i >= 0]
    ex["concepts"] = list(ex["concepts"])
    if taxonomy is not None and ex["label"]:
        try:
            node = taxonomy.id(ex["label"])
        except KeyError:
            raise DatasetFormatError(f"record {ex['id']!r}: label {ex['label']!r} is not a node of "
                                     f"the given taxonomy") from None
        ex["node"], ex["path"] = node, taxonomy.path(node)
        ex["malignancy"] = taxonomy.malignancy(node) or ""
    return ex


def load_examples(name: str, split: str, data_dir: str | Path, *, taxonomy: Taxonomy | None = None,
                  fraction: float = 1.0, seed: int = 42) -> list[dict[str, Any]]:
    """The Examples of a built dataset's split, images decoded (reads files; no builder code).

    `name` is the dataset name, or "name/config" for builders with configs. `fraction` < 1 keeps
    the deterministic, nested subset `splits.train_subset` picks for `seed` (data-scaling runs).
    """
    builder = tfds.builder_from_directory(_latest_version_dir(Path(data_dir), name))
    source = builder.as_data_source(split=split)
    if fraction >= 1.0:
        return [decode_record(source[i], taxonomy) for i in range(len(source))]
    ids = [_text(source[i]["id"]) for i in range(len(source))]
    return [decode_record(source[i], taxonomy) for i in train_subset(ids, fraction, seed)]


def load_report(name: str, data_dir: str | Path) -> HarmonizationReport:
    """The harmonisation report stored with a built dataset."""
    builder = tfds.builder_from_directory(_latest_version_dir(Path(data_dir), name))
    return HarmonizationReport.from_dict(builder.info.metadata["harmonization"])


def _latest_version_dir(data_dir: Path, name: str) -> Path:
    root = data_dir / name
    versions = sorted((p for p in root.glob("*") if re.fullmatch(r"\d+\.\d+\.\d+", p.name)),
                      key=lambda p: tuple(int(x) for x in p.name.split(".")))
    if not versions:
        raise FileNotFoundError(f"no built dataset {name!r} under {data_dir} (expected {root}/<version>)")
    return versions[-1]
