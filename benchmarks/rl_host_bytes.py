"""Bytes an RL step reads back from the devices to the host, measured on the real rollout
source (stages/rl.RolloutSource) of the tiny model on 8 fake CPU devices, next to what the
previous design pulled (the whole policy by `device_get` every step, plus the full reference
log-probs), and the same two figures computed for the 7B recipe.

    python -m benchmarks.rl_host_bytes [--steps 3] [--prompts 4] [--generations 4]

Sets XLA_FLAGS=--xla_force_host_platform_device_count=8 itself when run as a fresh process.
Prints one JSON line.
"""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count=8"
# (jax may be imported already, by benchmarks/__init__; its backend starts later)
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import argparse  # noqa: E402
import tempfile  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402


def _tree_bytes(tree: Any) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _previous_design_bytes(params: int, rows: int, seq: int, new_tokens: int) -> int:
    """What each step pulled before: the policy, then the full completions (tokens, log-probs
    f32, lengths) and the reference log-probs f32[rows, seq]."""
    return params + rows * new_tokens * 8 + rows * 4 + rows * seq * 4


def recipe_7b(prompts: int, generations: int, new_tokens: int, prompt_len: int,
              processes: int) -> dict[str, int]:
    """The 7B recipe's figures per process (bf16 base + adapters, 1024-token completions)."""
    from skinr1_jax.model import abstract_variables, config as mc
    from flax import linen as nn

    cfg = mc.qwen2_5_vl_7b_config(dtype="bfloat16", param_dtype="bfloat16",
                                  lora=mc.LoraConfig(rank=64, alpha=32.0))
    params = _tree_bytes(nn.unbox(abstract_variables(cfg)))
    rows = prompts * generations
    return {"param_bytes": params,
            "before_bytes_per_step": _previous_design_bytes(
                params, rows, prompt_len + new_tokens, new_tokens),
            "after_bytes_per_step_per_process": (rows // processes) * (new_tokens * 8 + 4) + 8}


def run(steps: int, prompts: int, generations: int, new_tokens: int) -> dict[str, Any]:
    from configs.ci import get_config
    from skinr1_jax.model import abstract_variables
    from skinr1_jax.stages import common as stage_common
    from skinr1_jax.stages import generate
    from skinr1_jax.stages.loop import apply_fn_for
    from skinr1_jax.stages.rl import RolloutSource
    from skinr1_jax.train import sharding
    from skinr1_jax.train.step import make_logprob_fn

    config = get_config()
    config.rl.batch_size, config.rl.num_generations = prompts, generations
    config.rl.max_new_tokens = new_tokens
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 1
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        generate.run(config, workdir)
        tokenizer = stage_common.load_tokenizer(config, workdir)
        model_cfg = stage_common.model_config(config, tokenizer)
        mesh = sharding.make_mesh(config.mesh)
        policy = sharding.place_variables(stage_common.initial_variables(config, model_cfg),
                                          abstract_variables(model_cfg), mesh)
        enc = stage_common.encoder(config, tokenizer, model_cfg)
        source = RolloutSource(config, workdir, model_cfg=model_cfg, tokenizer=tokenizer,
                               enc=enc, mesh=mesh, ref_variables=policy, logprob_fn=None)
        var_sh = jax.tree.map(lambda x: x.sharding, policy)
        source.logprob_fn = make_logprob_fn(apply_fn_for(model_cfg, source.grid),
                                            float(config.rl.temperature), mesh, var_sh)
        state = types.SimpleNamespace(variables=policy)   # what the sampler reads: in place
        per_step = []
        for step in range(steps):
            _, batch, _ = source.batches(state, step)
            per_step.append(source.host_bytes)
        seq = int(batch["input_ids"].shape[1])
        params = _tree_bytes(policy)
        rows = prompts * generations
    return {
        "benchmark": "rl_host_bytes", "mesh": dict(data=1, fsdp=8, tensor=1),
        "prompts": prompts, "generations": generations, "new_tokens": new_tokens,
        "rl_seq_len": seq, "param_bytes": params,
        "host_bytes_per_step": per_step,
        "previous_design_bytes_per_step": _previous_design_bytes(params, rows, seq, new_tokens),
        "recipe_7b_8_prompts_g4_1024_tokens_2_processes": recipe_7b(8, 4, 1024, 1024, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="unused (runner interface)")
    args = parser.parse_args(argv)
    return common.emit(run(args.steps, args.prompts, args.generations, args.new_tokens))


if __name__ == "__main__":
    main()
