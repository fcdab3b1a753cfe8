"""Stage `export`: the final model (models/sft_rl, else models/sft) for serving.

<workdir>/export/ is a saved-model folder (parameters-only orbax checkpoint in params/, plus
model_config.json and tokenizer/, what `diagnose --checkpoint` reads), with hf/ (config.json +
safetensors that transformers loads, LoRA merged) and, for LoRA runs, peft/ (the adapter in
PEFT's format, as the authors released theirs).
"""

from __future__ import annotations

from pathlib import Path

from ml_collections import ConfigDict

from skinr1_jax.stages import common


def run(config: ConfigDict, workdir: Path) -> dict:
    from skinr1_jax.model.hf_io import save_hf
    from skinr1_jax.model.peft_io import save_adapter
    from skinr1_jax.model.saved import load_model, save_model

    source = next((common.models_dir(workdir) / n for n in ("sft_rl", "sft")
                   if (common.models_dir(workdir) / n / "model_config.json").exists()), None)
    if source is None:
        raise FileNotFoundError(f"no trained model under {common.models_dir(workdir)}: run sft/rl first")
    from skinr1_jax.train.distributed import is_main_process

    # Every process reads the host copy from disk (no device gather); orbax writes the params
    # collectively, process 0 alone the Hugging Face and PEFT files.
    model_cfg, variables, tokenizer = load_model(source)
    out = workdir / "export"
    save_model(out, model_cfg, variables, tokenizer)
    written = {"model": str(out), "hf": str(out / "hf"), "from": source.name}
    if model_cfg.lora.rank > 0:
        written["peft"] = str(out / "peft")
    if is_main_process():
        save_hf(model_cfg, variables, out / "hf")
        tokenizer.save(out / "hf")
        if model_cfg.lora.rank > 0:
            save_adapter(model_cfg, variables, out / "peft",
                         base_model_name_or_path=config.model.hf_dir or None)
    common.write_json(out / "export.json", written)
    print(f"[export] {source.name} -> {out} (orbax params, hf/" + (", peft/" if "peft" in written else "") + ")")
    return written
