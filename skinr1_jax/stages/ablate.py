"""`python -m launch ablate --config configs/ablations.py`: every (variant, seed) of
`config.ablation` runs the whole pipeline in its own workdir (a subprocess each, so runs share
nothing but the files), then the means over seeds with 95% t-intervals go to
<workdir>/ablations.json and ablations.md.

No variant changes the `pretrain` stage, and its output does not depend on the variant: with
`pretrain.keep = "vision"` (an aligned vision tower on the seed's random language model) not on
the tokenizer a variant's trajectories build, with `keep = "all"` only when no variant changes
the generate stage that builds it. Then it runs once per seed in <workdir>/pretrain/seed<k> and
every variant of that seed starts from a copy of its models/base. Likewise the variants that
change nothing SFT depends on (only rl.* or eval.*) share one SFT run per seed in
<workdir>/sft/seed<k> and run only their RL and evaluation."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from skinr1_jax.stages import common

METRICS = ("mcq_indomain", "mcq_b_or_m", "mcq_hierarchical", "mcq_ddx", "ood", "acc_level1",
           "acc_level2", "acc_leaf", "mean_taxonomy_reward", "format_rate")
# Two-sided 95% Student-t quantiles by degrees of freedom (no scipy dependency).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228}


def override_flags(overrides: str) -> list[str]:
    """A variant's overrides: `--config.key=value` flags separated by spaces."""
    flags = overrides.split()
    bad = [f for f in flags if not f.startswith("--config.") or "=" not in f]
    if bad:
        raise ValueError(f"ablation overrides must be --config.key=value flags; got {bad}")
    return flags


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); half-width nan for a single value."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    if arr.size == 1:
        return float(arr[0]), float("nan")
    half = T95.get(arr.size - 1, 1.96) * arr.std(ddof=1) / math.sqrt(arr.size)
    return float(arr.mean()), float(half)


def command(config: ConfigDict, flags: Any) -> int:
    if "ablation" not in config:
        raise SystemExit("error: ablate needs a config with an `ablation` section "
                         "(configs/ablations.py)")
    root = Path(config.workdir)
    from ml_collections import config_flags

    config_file = config_flags.get_config_filename(flags["config"])

    def launch(workdir: Path, seed: int, extra: list[str], what: str) -> None:
        cmd = [sys.executable, "-m", "launch", "--config", config_file,
               f"--config.workdir={workdir}", f"--config.seed={seed}", *extra]
        print(f"[ablate] {what} seed {seed}: {' '.join(cmd[3:])}", flush=True)
        subprocess.run(cmd, check=True)

    shared = shares_pretraining(config)

    def shared_model(seed: int, name: str) -> Path:
        """models/<name> (base or sft) of the seed's shared run, run once: base by the pretrain
        stage in <root>/pretrain/seed<k>, sft from it in <root>/sft/seed<k>."""
        stage = {"base": "pretrain", "sft": "sft"}[name]
        folder = root / stage / f"seed{seed}"
        if not (folder / "models" / name / "model_config.json").exists():
            if name == "sft":
                copy_model(shared_model(seed, "base"), folder, "base")
            launch(folder, seed, [f"--stages=generate,{stage}"], stage)
        return folder / "models" / name

    runs: dict[str, list[dict]] = {}
    for variant, overrides in config.ablation.variants.items():
        runs[variant] = []
        for seed in config.ablation.seeds:
            workdir = root / variant / f"seed{seed}"
            results = workdir / "results.json"
            if not results.exists():
                extra = override_flags(overrides)
                if shared:
                    copy_model(shared_model(seed, "base"), workdir, "base")
                if shared and shares_sft(extra):
                    copy_model(shared_model(seed, "sft"), workdir, "sft")
                    extra.append("--stages=generate,rl,eval")
                elif shared:
                    extra.append("--stages=generate,sft,rl,eval")
                launch(workdir, seed, extra, variant)
            model = json.loads(results.read_text())
            runs[variant].append(model[list(model)[-1]])
    table = {v: {m: mean_ci([r.get(m) for r in rs]) for m in METRICS} for v, rs in runs.items()}
    common.write_json(root / "ablations.json", {"seeds": list(config.ablation.seeds),
                                                 "runs": runs, "mean_ci95": table})
    md = ablation_markdown(table, len(config.ablation.seeds))
    common.write_atomic(root / "ablations.md", md)
    print(md)
    return 0


# Sections whose overrides change the SFT model (the `generate` stage builds its data).
SFT_SECTIONS = ("seed", "data", "model", "generate", "pretrain", "sft")


def shares_sft(flags: list[str]) -> bool:
    """Whether a variant (given its override flags) starts RL from the seed's shared SFT model:
    when it changes nothing the SFT stage depends on, so only its RL and evaluation run."""
    return not any(f[len("--config."):].split("=")[0].split(".")[0] in SFT_SECTIONS
                   for f in flags)


def copy_model(model: Path, workdir: Path, name: str) -> None:
    """models/<name> of `workdir` as a copy of a shared run's `model` folder."""
    target = workdir / "models" / name
    if not (target / "model_config.json").exists():
        shutil.copytree(model, target, dirs_exist_ok=True)


def shares_pretraining(config: ConfigDict) -> bool:
    """Whether the variants of a seed can start from one pretrain run (see the module doc);
    refuses variants that override pretrain settings, which would make the sharing wrong. With
    `pretrain.keep = "all"` the aligned language model's rows are the ids of the tokenizer the
    generate stage builds from the trajectories, so it is shared only when no variant changes
    `generate.*` (the tokenizer is deterministic given those)."""
    if int(config.pretrain.steps) == 0:
        return False
    flags = {v: override_flags(o) for v, o in config.ablation.variants.items()}
    bad = [v for v, fs in flags.items() if any(f.startswith("--config.pretrain.") for f in fs)]
    if bad:
        raise ValueError(f"ablation variants {bad} override pretrain.*, but the pretrain stage "
                         "is shared by every variant of a seed")
    if config.pretrain.keep == "vision":
        return True
    return not any(f.startswith("--config.generate.") for fs in flags.values() for f in fs)


def ablation_markdown(table: dict[str, dict[str, tuple[float, float]]], seeds: int) -> str:
    """Means ± 95% half-widths; metrics no variant was evaluated on are left out."""
    shown = [k for k in METRICS if any(not math.isnan(row[k][0]) for row in table.values())]
    lines = [f"Mean over {seeds} seeds ± half-width of the 95% t-interval.", "",
             "| variant | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for variant, row in table.items():
        cells = [f"{m:.3f} ± {h:.3f}" if not math.isnan(h) else f"{m:.3f}"
                 for m, h in (row[k] for k in shown)]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
