"""Decode throughput: our jitted KV-cache sampler against transformers `generate`, on the same
tiny random Qwen2.5-VL (the default config's shapes), batch, prompt (text + one image per row)
and number of new tokens, on this machine's CPU. Greedy, no EOS, so every row generates every
token; each figure is the median of `repeats` timed runs after one warm-up (compilation).

    python -m benchmarks.decode [--batch-size 8] [--new-tokens 64] [--repeats 3]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import jax
import numpy as np

from skinr1_jax.model import tiny_config
from skinr1_jax.model.convert import random_batch, write_random_hf_checkpoint
from skinr1_jax.model.hf_io import load_hf
from skinr1_jax.model.sampler import sample


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: compilation / allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(batch_size: int = 8, new_tokens: int = 64, repeats: int = 3, vocab_size: int = 1024,
        image_side_patches: int = 8, text_len: int = 16) -> dict[str, Any]:
    """Time both decoders; returns tokens/s for each and the speed-up."""
    import torch

    cfg = tiny_config(vocab_size)
    grid = ((1, image_side_patches, image_side_patches),) * batch_size
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = write_random_hf_checkpoint(cfg, tmp, seed=0)
        cfg, variables = load_hf(tmp)
    batch = random_batch(cfg, grid, seed=0, text_len=text_len, batch_size=batch_size)

    def ours() -> np.ndarray:
        out = sample(cfg, variables, batch, temperature=0.0, max_new_tokens=new_tokens, eos_ids=(),
                     rng=jax.random.key(0), pad_id=0)
        return out.tokens  # numpy: the device work has finished

    ids = torch.as_tensor(batch["input_ids"], dtype=torch.long)
    hf_inputs = dict(
        input_ids=ids, attention_mask=torch.as_tensor(batch["attention_mask"], dtype=torch.long),
        mm_token_type_ids=(ids == cfg.image_token_id).to(torch.int32),
        pixel_values=torch.as_tensor(batch["pixel_values"]),
        image_grid_thw=torch.as_tensor(np.asarray(batch["grid_thw"]), dtype=torch.long))

    def theirs() -> Any:
        hf_model.model.rope_deltas = None
        with torch.inference_mode():
            return hf_model.generate(**hf_inputs, do_sample=False, max_new_tokens=new_tokens,
                                     eos_token_id=None, pad_token_id=0)

    ours_s = _median_seconds(ours, repeats)
    theirs_s = _median_seconds(theirs, repeats)
    generated = batch_size * new_tokens
    return {
        "benchmark": "decode",
        "batch_size": batch_size,
        "prompt_len": int(batch["input_ids"].shape[1]),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "ours_tokens_per_s": generated / ours_s,
        "transformers_tokens_per_s": generated / theirs_s,
        "speedup": theirs_s / ours_s,
        "torch_threads": torch.get_num_threads(),
        "jax_backend": jax.default_backend(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args.batch_size, args.new_tokens, args.repeats)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
