"""Decode throughput: our jitted KV-cache sampler against transformers `generate`, on the same
tiny random Qwen2.5-VL (the default config's shapes), batch, prompt (text + one image per row)
and number of new tokens, on this machine's CPU. Greedy, no EOS, so every row generates every
token; calls of the two sides are interleaved and each figure is the median (with min / max)
of `repeats` timed calls after one warm-up (our first call compiles; its excess over the
median is the compile time). transformers runs with its default (sdpa) attention, timed at
1 thread and at torch's default in the same turns; its figure is the faster of the two.

    python -m benchmarks.decode [--batch-sizes 8,64] [--new-tokens 64] [--repeats 5]

Prints one JSON line: one row per batch size; `speedup` is the first batch size's ratio.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import numpy as np

from benchmarks import common
from skinr1_jax.model.convert import random_batch
from skinr1_jax.model.sampler import sample


def measure(cfg: Any, variables: Any, hf_model: Any, batch_size: int, new_tokens: int,
            repeats: int, image_side_patches: int = 8, text_len: int = 16) -> dict[str, Any]:
    """One batch size: both decoders interleaved; tokens/s of each and the ratio."""
    import torch

    grid = ((1, image_side_patches, image_side_patches),) * batch_size
    batch = random_batch(cfg, grid, seed=0, text_len=text_len, batch_size=batch_size)

    key = jax.random.key(0)     # made once, as a training loop holds its key (greedy ignores it)

    def ours() -> np.ndarray:
        out = sample(cfg, variables, batch, temperature=0.0, max_new_tokens=new_tokens, eos_ids=(),
                     rng=key, pad_id=0)
        return out.tokens  # numpy: the device work has finished

    hf_inputs = common.hf_inputs(batch, batch["grid_thw"], cfg.image_token_id)

    def theirs() -> Any:
        hf_model.model.rope_deltas = None
        with torch.inference_mode():
            return hf_model.generate(**hf_inputs, do_sample=False, max_new_tokens=new_tokens,
                                     eos_token_id=None, pad_token_id=0)

    start = time.perf_counter()
    our_tokens = ours()
    first = time.perf_counter() - start
    # Greedy from the same weights: the same tokens, up to argmax near-ties that float
    # rounding can flip (after which a row goes its own way).
    their_tokens = theirs()[:, batch["input_ids"].shape[1]:].numpy()
    agreement = float(np.mean(our_tokens == their_tokens))
    timed = common.paired({"ours": ours, **common.torch_thread_sides("transformers", theirs)},
                          warmup=1, repeats=repeats)
    timed["transformers"], threads = common.fastest_torch_threads(timed, "transformers")
    generated = batch_size * new_tokens
    ours_r = common.throughput(timed["ours"], generated, "tokens")
    theirs_r = common.throughput(timed["transformers"], generated, "tokens")
    return {"batch_size": batch_size, "prompt_len": int(batch["input_ids"].shape[1]),
            "new_tokens": new_tokens, "ours": ours_r, "transformers": theirs_r,
            "compile_s": first - timed["ours"]["median_s"],
            "speedup": ours_r["tokens_per_s"] / theirs_r["tokens_per_s"],
            "token_agreement": agreement, "torch_threads": threads}


def run(batch_sizes: tuple[int, ...] = (8, 64), new_tokens: int = 64, repeats: int = 5,
        vocab_size: int = 1024) -> dict[str, Any]:
    cfg, variables, hf_model = common.tiny_model_pair(vocab_size)
    rows = [measure(cfg, variables, hf_model, b, new_tokens, repeats) for b in batch_sizes]
    return {"benchmark": "decode", **rows[0], "rows": rows, "repeats": repeats,
            "transformers_attn": hf_model.config._attn_implementation,
            "jax_backend": jax.default_backend()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="8,64")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    return common.emit(run(sizes, args.new_tokens, args.repeats))


if __name__ == "__main__":
    main()
