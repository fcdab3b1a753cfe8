"""Issue 12's report on the embedded default (letter-answering base, `mcq` RL), over seeds:

    python -m launch ablate --config configs/ablations_default.py

The whole default pipeline per seed, each model evaluated on every question set: the base
alone, SFT only, SFT then RL (the default), and the same RL with a flat reward (credit only
for the exact option) instead of the hierarchical one. A seed's variants share its pretraining
and SFT run (skinr1_jax/stages/ablate.py), so only RL and evaluation run per variant.
"""

from ml_collections import ConfigDict

from configs import default


def get_config() -> ConfigDict:
    c = default.get_config()
    c.workdir = "workdir/ablations_default"
    c.eval.models = ("sft_rl",)
    c.ablation = ConfigDict(dict(
        seeds=(42, 0, 1),
        variants=ConfigDict(dict(
            base="--config.sft.steps=0 --config.rl.steps=0",
            sft_only="--config.rl.steps=0",
            full="",
            flat_reward="--config.rl.reward.variant=flat",
        )),
    ))
    return c
