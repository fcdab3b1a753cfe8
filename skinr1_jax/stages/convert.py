"""Command `convert`: a local Hugging Face Qwen2.5-VL folder (+ an optional PEFT LoRA adapter,
merged) -> a saved-model folder (model_config.json + orbax params/ + tokenizer/), the layout
`diagnose`, `eval --checkpoint` and `model.saved.load_model` read.

`--verify` runs one random image+text batch through `transformers` and through our model, both
in fp32, and prints `max_abs_logit_diff=<value>` as the last line of stdout.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from skinr1_jax.stages.common import model_dtypes

TOLERANCE = 1e-4


def _error(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def command(config: ConfigDict, flags: Any) -> int:
    if not flags.hf_dir or not flags.out:
        return _error("convert needs --hf_dir DIR (a local Hugging Face model folder) and "
                      "--out DIR (where the converted model goes)", 2)
    hf_dir, out = Path(flags.hf_dir), Path(flags.out)
    adapter_dir = Path(flags.adapter_dir) if flags.adapter_dir else None
    if flags.verify:
        needed = ["torch", "transformers"] + (["peft"] if adapter_dir else [])
        absent = [m for m in needed if importlib.util.find_spec(m) is None]
        if absent:
            return _error(f"--verify needs {', '.join(absent)} installed (pip install "
                          f"{' '.join(absent)}); convert without --verify needs none of them", 2)
    if not (hf_dir / "config.json").is_file():
        return _error(f"--hf_dir {hf_dir}: no config.json there (not a Hugging Face model folder)")

    import jax
    import jax.numpy as jnp

    from skinr1_jax.model.hf_io import load_hf
    from skinr1_jax.model.peft_io import load_adapter
    from skinr1_jax.model.saved import save_model
    from skinr1_jax.model.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(hf_dir)  # first: a folder without one fails before the weights load
        cfg, variables = load_hf(hf_dir)
        if adapter_dir:
            cfg, variables = load_adapter(adapter_dir, cfg, variables, merge=True)
    except (OSError, ValueError) as e:  # hf_io / peft_io CheckpointError are ValueErrors
        return _error(str(e))
    # Stored in the config's dtypes; verification below always uses the fp32 import.
    saved_cfg = cfg.replace(**model_dtypes(config))
    dtype = jnp.dtype(saved_cfg.param_dtype)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), variables["params"])
    save_model(out, saved_cfg, {"params": params}, tokenizer)
    print(f"[convert] {hf_dir}{f' + adapter {adapter_dir}' if adapter_dir else ''} -> {out}")
    if not flags.verify:
        return 0

    from skinr1_jax.model.convert import _verify

    diff = _verify(hf_dir, cfg, variables, adapter_dir)
    ok = diff <= TOLERANCE  # False for NaN too
    if not ok:
        print(f"error: logits differ from transformers by {diff:.3e} > {TOLERANCE:g}",
              file=sys.stderr, flush=True)
    print(f"max_abs_logit_diff={diff:.3e}", flush=True)
    return 0 if ok else 1
