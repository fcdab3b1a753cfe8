"""What every stage needs: the tree and KB, the dataset splits, the tokenizer, the model
config, and atomic file writes. Stages talk to each other only through the workdir."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic_derm"
# How a public dataset's official splits feed the method: trajectories/SFT and RL both draw on
# its training split (label-only datasets have no dense annotations), evaluation on its test.
PUBLIC_SPLITS = {"dense_train": "train", "sparse_train": "train", "validation": "validation",
                 "test": "test", "ood_test": "test"}


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file + rename, so a crash never leaves a half-written artifact. On
    several processes only process 0 writes (every process computes the same artifact)."""
    from skinr1_jax.train.distributed import is_main_process

    if not is_main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@lru_cache(maxsize=1)
def taxonomy_and_kb():
    from skinr1_jax.knowledge import load_default_kb
    from skinr1_jax.taxonomy import load_default_taxonomy

    taxonomy = load_default_taxonomy()
    return taxonomy, load_default_kb(taxonomy)


def data_dir(config: ConfigDict, workdir: Path) -> Path:
    return Path(config.data.data_dir) if config.data.data_dir else workdir / "tfds"


_SPLIT_CACHE: dict[tuple, dict[str, list[dict]]] = {}


def dataset_splits(config: ConfigDict, workdir: Path) -> dict[str, list[dict]]:
    """The five splits the method uses (dense_train, sparse_train, validation, test,
    ood_test), built with the dataset's TFDS builder into the data dir on first use."""
    from skinr1_jax.train.distributed import main_process_first

    key = (str(workdir), config.data.to_json(), config.seed)
    if key not in _SPLIT_CACHE:
        # Process 0 builds the TFDS dataset once; the others then read what it wrote.
        with main_process_first(f"dataset:{key}"):
            _SPLIT_CACHE[key] = _build_and_load(config, workdir)
    return _SPLIT_CACHE[key]


def _build_and_load(config: ConfigDict, workdir: Path) -> dict[str, list[dict]]:
    from skinr1_jax.data.builders import BUILDERS, load_examples

    taxonomy, kb = taxonomy_and_kb()
    root = data_dir(config, workdir)
    name = config.data.dataset
    if name == SYNTHETIC:
        from skinr1_jax.data.builders.synthetic_derm import SyntheticDerm, config_from_data

        builder_config = config_from_data(config.data, config.seed)
        builder = SyntheticDerm(config=builder_config, data_dir=str(root), taxonomy=taxonomy, kb=kb)
        builder.download_and_prepare()
        full = f"{SYNTHETIC}/{builder_config.name}"
        return {split: load_examples(full, split, root, taxonomy=taxonomy)
                for split in ("dense_train", "sparse_train", "validation", "test", "ood_test")}
    if name not in BUILDERS:
        raise ValueError(f"config key 'data.dataset' = {name!r}: no such builder; "
                         f"known: {', '.join(sorted([SYNTHETIC, *BUILDERS]))}")
    if not config.data.manual_dir:
        raise ValueError(f"config key 'data.manual_dir' must name the folder holding {name}")
    builder = BUILDERS[name](data_dir=str(root), manual_dir=config.data.manual_dir,
                             on_bad_image=config.data.on_bad_image, seed=config.seed,
                             taxonomy=taxonomy)
    builder.download_and_prepare()
    available = set(builder.info.splits.keys())
    out = {}
    for ours, theirs in PUBLIC_SPLITS.items():
        if theirs not in available:
            out[ours] = []
            continue
        fraction = config.data.train_fraction if theirs == "train" else 1.0
        out[ours] = load_examples(name, theirs, root, taxonomy=taxonomy, fraction=fraction,
                                  seed=config.seed)
    return out


def tokenizer_dir(config: ConfigDict, workdir: Path) -> Path:
    return Path(config.model.hf_dir) if config.model.hf_dir else workdir / "tokenizer"


def load_tokenizer(config: ConfigDict, workdir: Path):
    from skinr1_jax.model.tokenizer import load_tokenizer as _load

    folder = tokenizer_dir(config, workdir)
    if not folder.exists():
        raise FileNotFoundError(f"tokenizer folder {folder} not found: run the generate stage "
                                "first (it builds the embedded tokenizer)")
    return _load(folder)


def model_dtypes(config: ConfigDict) -> dict[str, Any]:
    """ModelConfig's dtype fields from `config.model` ("" matmul_dtype: the compute dtype)."""
    return dict(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                matmul_dtype=config.model.matmul_dtype or None)


def model_config(config: ConfigDict, tokenizer) -> Any:
    """The ModelConfig of `config.model`, with special-token ids taken from the tokenizer."""
    from skinr1_jax.model import config as mc

    lora = mc.LoraConfig(rank=int(config.model.lora.rank), alpha=float(config.model.lora.alpha),
                         dropout=float(config.model.lora.dropout),
                         target_modules=tuple(config.model.lora.target_modules),
                         include_vision_blocks=bool(config.model.lora.include_vision_blocks))
    common = dict(**model_dtypes(config), remat=bool(config.model.remat), lora=lora)
    name = config.model.name
    if name == "tiny":
        return mc.tiny_config(vocab_size=tokenizer.vocab_size,
                              vision_start_token_id=tokenizer.vision_start_id,
                              vision_end_token_id=tokenizer.vision_end_id,
                              image_token_id=tokenizer.image_pad_id, **common)
    if name == "hf":
        hf = json.loads((Path(config.model.hf_dir) / "config.json").read_text())
        return mc.config_from_hf(hf, **common)
    return getattr(mc, f"{name}_config")(**common)


def models_dir(workdir: Path) -> Path:
    return workdir / "models"


def encoder(config: ConfigDict, tokenizer, model_cfg):
    from skinr1_jax.data.pipeline import ImageCache
    from skinr1_jax.rollout import Encoder

    return Encoder(tokenizer, model_cfg, int(config.data.min_pixels), int(config.data.max_pixels),
                   ImageCache(max_entries=16384))


def initial_variables(config: ConfigDict, model_cfg):
    """Where training starts from scratch: the tiny model's seeded random init, or the local
    Hugging Face checkpoint (+ PEFT adapter) for real-scale configs."""
    import jax

    from skinr1_jax.model import init_variables, unbox

    if config.model.name == "tiny":
        return jax.device_get(unbox(init_variables(model_cfg, jax.random.key(config.seed))))
    if config.model.name != "hf":
        raise ValueError(f"model.name={config.model.name!r} is a shape preset with no weights: "
                         "use model.name=hf with model.hf_dir for training")
    from skinr1_jax.model.hf_io import load_hf

    _, variables = load_hf(config.model.hf_dir, model_cfg)
    if config.model.adapter_dir:
        from skinr1_jax.model.peft_io import load_adapter

        _, variables = load_adapter(config.model.adapter_dir, model_cfg, variables)
    return variables


def base_variables(config: ConfigDict, workdir: Path, model_cfg, tokenizer):
    """The model SFT starts from and `base` evaluates: models/base when the `pretrain` stage
    (or an earlier call) wrote it, else `initial_variables`. The tiny model's is saved once, so
    every stage sees the same weights; a Hugging Face checkpoint is read in place."""
    from skinr1_jax.model.saved import load_model, save_model

    folder = models_dir(workdir) / "base"
    if (folder / "model_config.json").exists():
        return load_model(folder)[1]
    variables = initial_variables(config, model_cfg)
    if config.model.name == "tiny":
        save_model(folder, model_cfg, variables, tokenizer)
    return variables


def image_grid(encoded: dict) -> tuple[int, int, int]:
    return tuple(int(g) for g in encoded["grid_thw"])


def step_arrays(batch: dict) -> dict:
    """The arrays a jitted step takes: host-only fields and bookkeeping masks dropped."""
    from skinr1_jax.data.pipeline import HOST_KEYS

    drop = set(HOST_KEYS) | {"example_mask", "rope_deltas", "num_options", "answer"}
    return {k: v for k, v in batch.items() if k not in drop}
