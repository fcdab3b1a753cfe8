"""Decode throughput: our jitted KV-cache sampler against transformers `generate`, on the same
tiny random Qwen2.5-VL (the default config's shapes), batch, prompt (text + one image per row)
and number of new tokens, on this machine's CPU. Greedy, no EOS, so every row generates every
token; each figure is the median (with min / max) of `repeats` timed runs after one warm-up
(compilation). transformers runs with its default (sdpa) attention.

    python -m benchmarks.decode [--batch-size 8] [--new-tokens 64] [--repeats 3]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import numpy as np

from benchmarks import common
from skinr1_jax.model.convert import random_batch
from skinr1_jax.model.sampler import sample


def run(batch_size: int = 8, new_tokens: int = 64, repeats: int = 3, vocab_size: int = 1024,
        image_side_patches: int = 8, text_len: int = 16) -> dict[str, Any]:
    """Time both decoders; returns tokens/s for each and the speed-up."""
    import torch

    cfg, variables, hf_model = common.tiny_model_pair(vocab_size)
    grid = ((1, image_side_patches, image_side_patches),) * batch_size
    batch = random_batch(cfg, grid, seed=0, text_len=text_len, batch_size=batch_size)

    def ours() -> np.ndarray:
        out = sample(cfg, variables, batch, temperature=0.0, max_new_tokens=new_tokens, eos_ids=(),
                     rng=jax.random.key(0), pad_id=0)
        return out.tokens  # numpy: the device work has finished

    hf_inputs = common.hf_inputs(batch, batch["grid_thw"], cfg.image_token_id)

    def theirs() -> Any:
        hf_model.model.rope_deltas = None
        with torch.inference_mode():
            return hf_model.generate(**hf_inputs, do_sample=False, max_new_tokens=new_tokens,
                                     eos_token_id=None, pad_token_id=0)

    generated = batch_size * new_tokens
    ours_r = common.throughput(common.time_fn(ours, repeats=repeats), generated, "tokens")
    theirs_t, threads = common.time_torch(theirs, repeats=repeats)
    theirs_r = common.throughput(theirs_t, generated, "tokens")
    return {
        "benchmark": "decode",
        "batch_size": batch_size,
        "prompt_len": int(batch["input_ids"].shape[1]),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "ours": ours_r,
        "transformers": theirs_r,
        "speedup": ours_r["tokens_per_s"] / theirs_r["tokens_per_s"],
        "torch_threads": threads,
        "transformers_attn": hf_model.config._attn_implementation,
        "jax_backend": jax.default_backend(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    return common.emit(run(args.batch_size, args.new_tokens, args.repeats))


if __name__ == "__main__":
    main()
