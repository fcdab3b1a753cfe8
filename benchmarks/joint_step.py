"""One iteration of the joint SFT + RL (GRPO) loop on the tiny model, timed phase by phase:
sampling (G completions per prompt with the KV-cache sampler), reward (host decode and parse of
the completions; the reward arithmetic itself runs inside the update), RL-batch assembly,
reference forward (per-token log-probs of the frozen reference) and the update (one jitted
lambda_sft * SFT + lambda_rl * GRPO step). Also: the compile time of each jitted function
(first call minus a steady call) and the process's peak RSS.

    python -m benchmarks.joint_step [--prompts 4] [--generations 4] [--new-tokens 32]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import numpy as np

from benchmarks import common
from benchmarks.pipeline import RESPONSE
from skinr1_jax.model import init_variables, tiny_config, unbox
from skinr1_jax.model.convert import random_batch
from skinr1_jax.model.sampler import sample
from skinr1_jax.model.tokenizer import build_embedded_tokenizer
from skinr1_jax.train import grpo, rewards
from skinr1_jax.train import sharding as shd
from skinr1_jax.train import state as st
from skinr1_jax.train import step as stp

PHASES = ("sampling", "reward", "assemble", "reference_forward", "update")


def rl_batch(prompts: dict[str, Any], tokens: np.ndarray, generations: int,
             eos_ids: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Prompt + completion rows (row i * G + j = sample j of prompt i) as step inputs in
    input-token coordinates; every prompt has one image of the same grid."""
    g = generations
    ids = np.repeat(prompts["input_ids"], g, axis=0)
    mask = np.repeat(prompts["attention_mask"], g, axis=0)
    pos = np.repeat(prompts["position_ids"], g, axis=1)
    comp = grpo.completion_mask(tokens, eos_ids)
    t = tokens.shape[1]
    # decode positions continue after the largest prompt position on all three axes
    nxt = pos.max(axis=(0, 2)) + 1
    comp_pos = np.broadcast_to((nxt[:, None] + np.arange(t))[None], (3, len(nxt), t))
    patches = len(prompts["pixel_values"]) // len(prompts["input_ids"])
    pixels = prompts["pixel_values"].reshape(len(prompts["input_ids"]), patches, -1)
    batch = {
        "input_ids": np.concatenate([ids, tokens], axis=1).astype(np.int32),
        "attention_mask": np.concatenate([mask, comp], axis=1).astype(np.int32),
        "position_ids": np.concatenate([pos, comp_pos], axis=2).astype(np.int32),
        "pixel_values": np.repeat(pixels, g, axis=0).reshape(-1, pixels.shape[-1]),
        "completion_mask": np.concatenate([np.zeros_like(ids), comp], axis=1).astype(np.int32),
        "group_ids": grpo.assign_group_ids(len(prompts["input_ids"]), g),
    }
    return batch


def run(prompts: int = 4, generations: int = 4, new_tokens: int = 32, sft_batch_size: int = 8,
        sft_seq_len: int = 128, repeats: int = 3, vocab_size: int = 1024) -> dict[str, Any]:
    tok = build_embedded_tokenizer([RESPONSE] * 20, vocab_size)
    cfg = tiny_config(vocab_size, **tok.model_token_ids())
    variables = unbox(init_variables(cfg, jax.random.PRNGKey(0)))
    mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    image_grid = (1, 8, 8)
    sft, _ = common.sft_batch(cfg, sft_batch_size, sft_seq_len, image_patches=image_grid[1])
    prompt = random_batch(cfg, (image_grid,) * prompts, seed=1, text_len=8, batch_size=prompts)
    rng = np.random.default_rng(0)
    n_rows = prompts * generations
    targets = {"option_scores": rng.uniform(0, 0.75, (n_rows, 4)).astype(np.float32),
               "malignancy_true": rng.integers(0, 4, n_rows).astype(np.int32)}
    step_cfg = stp.StepConfig(lambda_sft=1.0, lambda_rl=1.0, beta=0.04)

    def sampling(i: int):
        return sample(cfg, variables, prompt, num_samples=generations, temperature=1.0,
                      max_new_tokens=new_tokens, eos_ids=tok.eos_ids, rng=jax.random.key(i),
                      pad_id=tok.pad_id)

    def reward(out) -> dict[str, np.ndarray]:
        texts = [tok.decode(r[:n].tolist(), skip_special_tokens=True)
                 for r, n in zip(out.tokens, out.lengths)]
        return {**rewards.parse_responses(texts), **targets}

    # the RL batch's structure for the step's shardings, before any sampler call (whose first
    # call is timed as the sampler's compile)
    rl_host = rl_batch(prompt, np.zeros((n_rows, new_tokens), np.int32), generations, tok.eos_ids)
    rl_host.update(rewards.parse_responses([""] * n_rows), **targets,
                   ref_logprobs=np.zeros(rl_host["input_ids"].shape, np.float32))
    sft_dev = shd.shard_batch(sft, mesh)
    step, state, shardings = common.train_step(
        cfg, variables, image_grid, mesh, sft_example=sft_dev,
        rl_example=shd.shard_batch(rl_host, mesh), step_cfg=step_cfg)
    var_sh = st.merge_variables(shardings.trainable, shardings.frozen)
    ref_fn = stp.make_logprob_fn(common.model_apply_fn(cfg, image_grid), step_cfg.temperature,
                                 mesh, var_sh)
    ref_vars = jax.device_put(variables, var_sh)

    holder = {"state": state}

    def iteration(i: int) -> tuple[dict[str, float], dict[str, Any]]:
        clock = {}
        t0 = time.perf_counter()
        out = sampling(i)                                   # numpy: finished
        clock["sampling"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        parsed = reward(out)
        clock["reward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        host = rl_batch(prompt, out.tokens, generations, tok.eos_ids)
        host.update(parsed)
        dev = shd.shard_batch(host, mesh)
        clock["assemble"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dev["ref_logprobs"] = common.block(ref_fn(ref_vars, dev))
        clock["reference_forward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        holder["state"], metrics = step(holder["state"], sft_dev, dev)
        metrics = common.block(metrics)
        clock["update"] = time.perf_counter() - t0
        return clock, metrics

    first, _ = iteration(0)                                 # compiles everything
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    for i in range(repeats):
        clock, metrics = iteration(i + 1)
        for p in PHASES:
            times[p].append(clock[p])

    phases = {p: common.timing(times[p]) for p in PHASES}
    total = sum(phases[p]["median_s"] for p in PHASES)
    return {
        "benchmark": "joint_step", "prompts": prompts, "generations": generations,
        "new_tokens": new_tokens, "sft_batch_size": sft_batch_size, "sft_seq_len": sft_seq_len,
        "rl_seq_len": int(rl_host["input_ids"].shape[1]),
        "phases": phases,
        "share": {p: phases[p]["median_s"] / total for p in PHASES},
        "iteration_s": total,
        "compile_s": {"sampler": first["sampling"] - phases["sampling"]["median_s"],
                      "reference_forward": (first["reference_forward"]
                                            - phases["reference_forward"]["median_s"]),
                      "train_step": first["update"] - phases["update"]["median_s"]},
        "final_loss": float(metrics["loss"]),
        "completion_len": float(metrics["completion_len"]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    return common.emit(run(args.prompts, args.generations, args.new_tokens,
                           repeats=args.repeats))


if __name__ == "__main__":
    main()
