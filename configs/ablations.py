"""The paper's ablations on the embedded default, 3 seeds each:

    python -m launch ablate --config configs/ablations.py

Variants: the full method; SFT only; RL without SFT; flat instead of hierarchical reward;
trajectories without the DDx step. Each (variant, seed) runs the whole pipeline in
<workdir>/<variant>/seed<k>; the command then writes <workdir>/ablations.json and
ablations.md (means with 95% t-intervals over seeds).
"""

from ml_collections import ConfigDict

from configs import default


def get_config() -> ConfigDict:
    c = default.get_config()
    c.workdir = "workdir/ablations"
    # A reduced budget (15 pipelines on 2 CPU cores in under an hour): the main job's data and
    # pretraining (run once per seed and shared, see skinr1_jax/stages/ablate.py), half its
    # SFT steps, a third of its RL steps, and the in-domain and open-ended sets only, on the
    # whole test split.
    c.sft.steps = 400
    c.rl.steps = 80
    c.eval.models = ("sft_rl",)
    c.eval.sets = ("indomain", "open")
    c.eval.max_examples = 0
    # Each variant is the command-line overrides it adds to this config.
    c.ablation = ConfigDict(dict(
        seeds=(0, 1, 2),
        variants=ConfigDict(dict(
            full="",
            sft_only="--config.rl.steps=0",
            rl_without_sft="--config.sft.steps=0 --config.rl.init_from=base",
            flat_reward="--config.rl.reward.variant=flat",
            no_ddx_step="--config.generate.types=('basic',)",
        )),
    ))
    return c
