"""TFDS builder for the embedded `synthetic_derm` dataset (array_record, no TensorFlow needed).

The records use the public builders' feature spec (`common.common_features`): the image is
stored as PNG bytes (lossless, so a read-back image is byte-identical to the rendered one), the
path padded with -1, `raw_label` = label and `group` = "". Splits are synthetic_derm's five
(dense_train, sparse_train, validation, test, ood_test), written in generation order.

    builder = SyntheticDerm(data_dir=d, config=config_from_data(cfg.data, cfg.seed))
    builder.download_and_prepare()
    examples = load_split(f"synthetic_derm/{builder.builder_config.name}", "test", d)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from skinr1_jax.data.builders.common import (
    MAX_PATH_LEN, common_features, load_examples, taxonomy_fingerprint)
from skinr1_jax.data.synthetic.dataset import (
    SPLITS, build_specs, class_counts, render_example)

_PARAMS = ("subset", "class_balance", "image_size", "dense_per_class", "sparse_per_class",
           "val_per_class", "test_per_class", "ood_per_class", "train_fraction")


@dataclasses.dataclass(eq=False)
class SyntheticDermConfig(tfds.core.BuilderConfig):
    """Rendering parameters: the data-config keys of `_PARAMS` plus the seed."""
    seed: int = 42
    subset: str = "default"
    class_balance: str = "balanced"
    image_size: int = 64
    dense_per_class: int = 24
    sparse_per_class: int = 48
    val_per_class: int = 6
    test_per_class: int = 12
    ood_per_class: int = 8
    train_fraction: float = 1.0


def config_from_data(data_cfg: Any, seed: int) -> SyntheticDermConfig:
    """A config matching a `config.data` (ConfigDict or dict); its name encodes the parameters."""
    get = data_cfg.get if hasattr(data_cfg, "get") else lambda k, d=None: getattr(data_cfg, k, d)
    defaults = SyntheticDermConfig(name="_")
    params = {k: get(k, getattr(defaults, k)) for k in _PARAMS}
    digest = hashlib.sha1(json.dumps({**params, "seed": int(seed)}, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{params['subset']}_{params['class_balance']}_{params['image_size']}px_seed{seed}_{digest}"
    return SyntheticDermConfig(name=name, seed=int(seed), **params,
                               description=f"synthetic_derm with {params}, seed {seed}")


class SyntheticDerm(tfds.core.GeneratorBasedBuilder):
    """Procedural dermatology images over the taxonomy (skinr1_jax.data.synthetic)."""

    name = "synthetic_derm"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Nothing is downloaded, so there is no checksums file beside this module to look for.
    code_path = None
    BUILDER_CONFIGS = [
        SyntheticDermConfig(name="default", description="12 diseases, balanced, 64 px, seed 42"),
        SyntheticDermConfig(name="full", subset="full", description="all 114 Fitzpatrick17k diseases, 64 px"),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *, taxonomy=None, kb=None, **kwargs: Any):
        """`taxonomy`/`kb`: default the shipped tree and knowledge base; node ids are the taxonomy's."""
        self._taxonomy, self._kb = taxonomy, kb
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedurally rendered clinical-photo-like skin lesions drawn from the "
                        "knowledge base's textbook profiles, with ground-truth concepts.",
            features=tfds.features.FeaturesDict(common_features()),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        if self._taxonomy is None:
            from skinr1_jax.taxonomy import load_default_taxonomy
            self._taxonomy = load_default_taxonomy()
        if self._kb is None:
            from skinr1_jax.knowledge import load_default_kb
            self._kb = load_default_kb(self._taxonomy)
        cfg = {k: getattr(self.builder_config, k) for k in _PARAMS}
        specs = build_specs(cfg, self._taxonomy, self._kb)
        counts = class_counts(cfg, [s.name for s in specs.values()])
        self.info.metadata["taxonomy_fingerprint"] = taxonomy_fingerprint(self._taxonomy)
        self.info.metadata["anchors"] = {s.name: [list(a) for a in s.signature.anchors] for s in specs.values()}
        return {split: self._generate_examples(split, specs, counts[split]) for split in SPLITS}

    def _generate_examples(self, split: str, specs, counts) -> Iterator[tuple[str, dict]]:
        c = self.builder_config
        for spec in specs.values():
            for i in range(counts[spec.name]):
                ex = render_example(spec, self._taxonomy, split, i, c.seed, c.image_size)
                yield ex["id"], _encode(ex)


def _encode(ex: dict) -> dict:
    buf = io.BytesIO()
    Image.fromarray(ex["image"]).save(buf, format="PNG", compress_level=1)
    path = np.full(MAX_PATH_LEN, -1, np.int32)
    path[:len(ex["path"])] = ex["path"]
    return {**ex, "image": np.frombuffer(buf.getvalue(), np.uint8), "path": path,
            "raw_label": ex["label"], "group": ""}


def load_split(name: str, split: str, data_dir: str | Path) -> list[dict]:
    """The Example dicts of a built split (`name` e.g. "synthetic_derm/default"), in build order."""
    if split not in SPLITS:
        raise ValueError(f"synthetic_derm split {split!r}: expected one of {SPLITS}")
    out = load_examples(name, split, data_dir)
    for ex in out:
        ex.pop("raw_label", None)
        ex.pop("group", None)
    return out
