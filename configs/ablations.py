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
    c.eval.models = ("sft_rl",)
    c.ablation = ConfigDict(dict(
        seeds=(0, 1, 2),
        variants=ConfigDict(dict(
            full={},
            sft_only={"rl.steps": 0},
            rl_without_sft={"sft.steps": 0, "rl.init_from": "base"},
            flat_reward={"rl.reward.variant": "flat"},
            no_ddx_step={"generate.types": ("basic",)},
        )),
    ))
    return c
