"""Stage `eval` (base, sft and sft_rl models on every question set; results.json/.md and plots)
and the `eval --checkpoint DIR --dataset NAME` command (any saved model on any split)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from skinr1_jax.stages import common

TABLE_KEYS = ("mcq_indomain", "mcq_b_or_m", "mcq_hierarchical", "mcq_ddx", "ood", "acc_level1",
              "acc_level2", "acc_leaf", "mean_tree_distance", "hier_f1", "format_rate",
              "ddx_recall", "mean_taxonomy_reward", "max_skin_type_gap")


def _variables_of(name: str, config: ConfigDict, workdir: Path, model_cfg: Any, tokenizer: Any):
    from skinr1_jax.model.saved import load_model

    if name == "base":
        return common.base_variables(config, workdir, model_cfg, tokenizer)
    folder = common.models_dir(workdir) / name
    if not (folder / "model_config.json").exists():
        raise FileNotFoundError(f"{folder} not found: run the stage that trains '{name}' first")
    return load_model(folder)[1]


def run(config: ConfigDict, workdir: Path) -> dict:
    from skinr1_jax.eval.evaluate import Evaluator

    taxonomy, kb = common.taxonomy_and_kb()
    tokenizer = common.load_tokenizer(config, workdir)
    model_cfg = common.model_config(config, tokenizer)
    splits = common.dataset_splits(config, workdir)
    evaluator = Evaluator(config, model_cfg, tokenizer, common.encoder(config, tokenizer, model_cfg),
                          splits, taxonomy, kb.ddx_graph())
    sizes = {k: len(v[1]) for k, v in evaluator.sets.items()}
    print("[eval] question sets: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    results, extras = {}, {}
    for name in config.eval.models:
        variables = _variables_of(name, config, workdir, model_cfg, tokenizer)
        results[name], extras[name] = evaluator.evaluate(variables)
        print(f"[eval] {name}: " + ", ".join(f"{k} {_fmt(results[name].get(k))}"
                                             for k in TABLE_KEYS[:8]))
    common.write_json(workdir / "results.json", results)
    table = results_markdown(results)
    common.write_atomic(workdir / "results.md", table)
    from skinr1_jax.train.distributed import is_main_process

    if is_main_process():
        _plots(workdir, results, extras, taxonomy)
    print(table)
    return results


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, (float, int, np.floating)) else str(value)


def results_markdown(results: dict[str, dict]) -> str:
    models = list(results)
    lines = ["| metric | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for key in TABLE_KEYS:
        lines.append(f"| {key} | " + " | ".join(_fmt(results[m].get(key)) for m in models) + " |")
    for key in ("acc_level1", "acc_level2", "acc_leaf", "mean_taxonomy_reward"):
        lines.append(f"| ood_open.{key} | " + " | ".join(
            _fmt(results[m].get("ood_open", {}).get(key)) for m in models) + " |")
    return "\n".join(lines + _interval_lines(results) + _option_check_lines(results)) + "\n"


def _option_check_lines(results: dict[str, dict]) -> list[str]:
    """With generate.option_check: what the written checks show (eval/option_check.py)."""
    from skinr1_jax.eval.option_check import RATE_KEYS

    models = list(results)
    rows = [(m, key, d["option_check"]) for m in models
            for key, d in results[m].get("details", {}).items() if "option_check" in d]
    if not rows:
        return []
    lines = ["", "Option checks (shares of questions; the two copy rates of option lines):", "",
             "| model | set | " + " | ".join(RATE_KEYS) + " |", "|---" * (len(RATE_KEYS) + 2) + "|"]
    lines += [f"| {m} | {key} | " + " | ".join(_fmt(rates[k]) for k in RATE_KEYS) + " |"
              for m, key, rates in rows]
    return lines


def _interval_lines(results: dict[str, dict]) -> list[str]:
    """The 95% Wilson interval of every share-of-questions metric, one row each."""
    models = list(results)
    keys = list(dict.fromkeys(k for m in models for k in results[m].get("details", {})
                              if "ci95" in results[m]["details"][k]))
    if not keys:
        return []
    lines = ["", "95% Wilson intervals (n questions):", "",
             "| metric | n | " + " | ".join(models) + " |", "|---" * (len(models) + 2) + "|"]
    for key in keys:
        cells, n = [], "-"
        for m in models:
            d = results[m].get("details", {}).get(key)
            if d is None:
                cells.append("-")
                continue
            n = d["n"]
            cells.append(f"{_fmt(d['ci95'][0])}–{_fmt(d['ci95'][1])}")
        lines.append(f"| {key} | {n} | " + " | ".join(cells) + " |")
    return lines


def _plots(workdir: Path, results: dict, extras: dict, taxonomy) -> None:
    from skinr1_jax.eval import metrics, plots

    plots.training_curves(workdir, workdir / "training_curves.png")
    plots.accuracy_by_level(results, workdir / "accuracy_by_level.png")
    for name, extra in extras.items():
        if "open" not in extra:
            continue
        for level, tag in ((2, "subgroup"), (3, "disease")):
            ids, matrix = metrics.confusion_matrix(taxonomy, extra["open"]["pred"],
                                                   extra["open"]["truth"], level)
            labels = [taxonomy.name(i) for i in ids] + ["unknown"]
            # Only the nodes that occur (as truth or answer) and the `unknown` column.
            keep = [i for i in range(len(ids)) if matrix[i].sum() > 0 or matrix[:, i].sum() > 0]
            keep.append(len(ids))
            sub = matrix[np.ix_(keep, keep)]
            plots.tree_confusion(sub, [labels[i] for i in keep],
                                 workdir / f"confusion_{tag}_{name}.png",
                                 f"{name}: open-ended answers at {tag} level (rows: truth)")


def command(config: ConfigDict, flags: Any) -> int:
    """Evaluate a saved model (--checkpoint) on one split of any dataset (--dataset)."""
    from skinr1_jax.eval.evaluate import Evaluator
    from skinr1_jax.model.saved import load_model

    model_cfg, variables, tokenizer = load_model(flags.checkpoint)
    name = flags.dataset or config.data.dataset
    config = ConfigDict(config.to_dict())
    config.data.dataset = name
    workdir = Path(config.workdir)
    splits = common.dataset_splits(config, workdir)
    wanted = {"train": "sparse_train"}.get(flags.split, flags.split)
    if wanted not in splits:
        raise SystemExit(f"error: dataset {name} has no split {flags.split!r}; "
                         f"splits: {', '.join(splits)}")
    examples = splits[wanted]
    if not examples:
        raise SystemExit(f"error: split {flags.split!r} of {name} is empty")
    config.eval.sets = ("indomain", "b_or_m", "hierarchical", "ddx", "open")
    taxonomy, kb = common.taxonomy_and_kb()
    evaluator = Evaluator(config, model_cfg, tokenizer, common.encoder(config, tokenizer, model_cfg),
                          {"test": examples, "ood_test": examples}, taxonomy, kb.ddx_graph())
    results, _ = evaluator.evaluate(variables)
    out = workdir / f"eval_{name}_{flags.split}.json"
    common.write_json(out, results)
    print(results_markdown({Path(flags.checkpoint).name: results}))
    print(f"[eval] wrote {out}")
    return 0
