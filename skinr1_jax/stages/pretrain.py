"""Stage `pretrain`: vision-language alignment of a model that cannot see yet (the embedded
tiny default), on image -> findings captions of the concept-annotated images and, with
`pretrain.questions_per_image`, 4-option questions about their findings (data/captions.py),
writing models/base. `pretrain.steps = 0` (the real-scale configs: their checkpoint is already
an instruction-tuned VLM) skips it, and models/base is the initial model."""

from __future__ import annotations

from pathlib import Path

from ml_collections import ConfigDict

from skinr1_jax.stages import common


def kept_variables(trained: dict, initial: dict, keep: str) -> dict:
    """`all`: the aligned model. `vision`: the aligned vision tower and merger on the initial
    language model, as a captioning-pretrained encoder (CapPa) joins a fresh decoder: a tiny
    language model that has only ever written captions is a worse start for SFT's long
    reasoning than a random one (measured on the default: disease-level accuracy after SFT
    0.083, i.e. chance, with `all`; 0.333 with `vision`)."""
    if keep == "all":
        return trained
    if keep != "vision":
        raise ValueError(f"pretrain.keep={keep!r}: expected 'all' or 'vision'")
    params = dict(initial["params"])
    params["visual"] = trained["params"]["visual"]
    return {**initial, "params": params}


def run(config: ConfigDict, workdir: Path) -> dict:
    from skinr1_jax.data.captions import alignment_items
    from skinr1_jax.model.saved import save_model
    from skinr1_jax.stages.loop import train
    from skinr1_jax.stages.sft import ItemSource
    from skinr1_jax.train.step import StepConfig

    steps = int(config.pretrain.steps)
    if steps == 0:
        print("[pretrain] pretrain.steps = 0: models/base is the initial model")
        return {"steps": 0}
    tokenizer = common.load_tokenizer(config, workdir)
    model_cfg = common.model_config(config, tokenizer)
    dense = common.dataset_splits(config, workdir)["dense_train"]
    items = alignment_items(dense, questions_per_image=int(config.pretrain.questions_per_image),
                            seed=config.seed, think_tag=config.generate.think_tag,
                            final_tag=config.generate.final_tag)
    source = ItemSource(items, {str(e["id"]): e["image"] for e in dense},
                        common.encoder(config, tokenizer, model_cfg), tokenizer,
                        seq_len=int(config.pretrain.max_seq_len),
                        batch_size=int(config.pretrain.batch_size), seed=config.seed + 2,
                        max_targets=int(config.data.max_target_tokens),
                        seq_len_key="pretrain.max_seq_len",
                        length_bucket=int(config.data.length_bucket))
    print(f"[pretrain] {len(items)} items (captions + {config.pretrain.questions_per_image} "
          f"concept question(s) per annotated image) "
          f"({len(items) / config.pretrain.batch_size:.0f} steps per epoch), {steps} steps of "
          f"{config.pretrain.batch_size}")
    initial = common.initial_variables(config, model_cfg)
    result = train("pretrain", config, workdir, model_cfg=model_cfg, variables=initial,
                   grid=source.grid,
                   source=source, step_cfg=StepConfig(lambda_sft=1.0, lambda_rl=0.0),
                   steps=steps, learning_rate=float(config.pretrain.learning_rate),
                   warmup_ratio=float(config.pretrain.warmup_ratio),
                   example_batches=(source.example(), None))
    out = common.models_dir(workdir) / "base"
    save_model(out, model_cfg, kept_variables(result.variables, initial, config.pretrain.keep),
               tokenizer)
    print(f"[pretrain] done in {result.seconds:.0f}s; loss "
          f"{result.last_metrics.get('loss', float('nan')):.4f} -> {out}")
    return {"steps": result.steps, "seconds": result.seconds, **result.last_metrics}
