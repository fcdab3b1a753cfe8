"""A self-contained saved model: `model_config.json` + `params/` (orbax) + `tokenizer/`.

This is what stages hand to each other (models/base, models/sft, models/sft_rl), what `export`
writes for serving, and what `diagnose` / `eval --checkpoint` read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from skinr1_jax.model.config import ModelConfig, config_from_dict, config_to_dict


class SavedModelError(ValueError):
    """A saved-model folder is missing a part or is unreadable; the message names it."""


def save_model(out_dir: str | Path, cfg: ModelConfig, variables: Any, tokenizer: Any) -> Path:
    """Write the three parts; params are written atomically by orbax (tmp dir + rename).

    Collective on several processes: every process calls it, orbax writes each process's
    shards of `variables` (jax Arrays stay where they are, even when they span hosts), and
    process 0 alone writes the small files."""
    from skinr1_jax.train.checkpoint import save_params
    from skinr1_jax.train.distributed import barrier, is_main_process

    out = Path(out_dir)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        if (out / "params").exists():
            shutil.rmtree(out / "params")
    barrier(f"save_model:{out}")
    save_params(out / "params", variables)
    if is_main_process():
        tokenizer.save(out / "tokenizer")
        tmp = out / ".model_config.json.tmp"
        tmp.write_text(json.dumps(config_to_dict(cfg), indent=2))
        tmp.replace(out / "model_config.json")
    barrier(f"save_model_done:{out}")
    return out


def load_model(model_dir: str | Path) -> tuple[ModelConfig, Any, Any]:
    """(cfg, variables, tokenizer) from a `save_model` folder."""
    from skinr1_jax.model.tokenizer import load_tokenizer
    from skinr1_jax.train.checkpoint import load_params

    folder = Path(model_dir)
    if not folder.is_dir():
        raise SavedModelError(f"checkpoint folder {folder} does not exist")
    for part in ("model_config.json", "params", "tokenizer"):
        if not (folder / part).exists():
            raise SavedModelError(f"checkpoint folder {folder} lacks {part} "
                                  "(expected a folder written by the sft/rl/export stages)")
    try:
        cfg = config_from_dict(json.loads((folder / "model_config.json").read_text()))
    except (ValueError, TypeError) as e:
        raise SavedModelError(f"{folder / 'model_config.json'}: {e}") from e
    variables = load_params(folder / "params")
    return cfg, variables, load_tokenizer(folder / "tokenizer")
