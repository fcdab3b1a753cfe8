"""The paper's ablations on the open-ended recipe (configs/open_rl.py, where they were
measured; README "Ablations"), 3 seeds each:

    python -m launch ablate --config configs/ablations.py

Variants: the base model alone; SFT only; the full method (SFT then RL); a flat instead of the
hierarchical reward; RL without SFT (pure GRPO from the base); trajectories without the DDx
step. Each (variant, seed) runs in
<workdir>/<variant>/seed<k>, sharing the seed's pretraining and, where the variant changes
nothing SFT depends on, its SFT model (skinr1_jax/stages/ablate.py); the command then writes
<workdir>/ablations.json and ablations.md (means with 95% t-intervals over seeds).
"""

from ml_collections import ConfigDict

from configs import open_rl


def get_config() -> ConfigDict:
    c = open_rl.get_config()
    c.workdir = "workdir/ablations"
    # A reduced budget (the pipelines of 3 seeds on 2 CPU cores in about an hour): the main
    # job's data and pretraining (run once per seed and shared, see skinr1_jax/stages/ablate.py),
    # half its SFT steps, a third of its RL steps, and the in-domain and open-ended sets only,
    # on the whole test split.
    c.sft.steps = 400
    c.rl.steps = 80
    c.eval.models = ("sft_rl",)
    c.eval.sets = ("indomain", "open")
    c.eval.max_examples = 0
    # Each variant is the command-line overrides it adds to this config. `base` and `sft_only`
    # are the starting points (their models/sft_rl is the base or the SFT model, unchanged).
    c.ablation = ConfigDict(dict(
        seeds=(0, 1, 2),
        variants=ConfigDict(dict(
            base="--config.sft.steps=0 --config.rl.steps=0",
            sft_only="--config.rl.steps=0",
            full="",
            flat_reward="--config.rl.reward.variant=flat",
            # Pure GRPO from the base: no SFT stage and no SFT term in the joint objective.
            rl_without_sft="--config.sft.steps=0 --config.rl.init_from=base --config.rl.lambda_sft=0",
            no_ddx_step="--config.generate.types=('basic',)",
        )),
    ))
    return c
