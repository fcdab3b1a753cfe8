"""Input-pipeline throughput on this machine: examples/s for SFT and RL-prompt batches, cold
(every image preprocessed) and warm (second epoch, encodings cached), at the default config's
image size, pixel budget and sequence length.

    python -m benchmarks.pipeline [--examples 256] [--batch-size 16]

Each rate is the median (min / max) over `--repeats` fresh iterators. Prints one JSON line.
The default run consumes sft.steps * sft.batch_size SFT examples and
rl.steps * rl.batch_size prompts; the line reports those needs next to the measured rates.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import common
from configs.default import get_config
from skinr1_jax.data import pipeline, prompts, tasks
from skinr1_jax.model import tiny_config
from skinr1_jax.model.tokenizer import build_embedded_tokenizer
from skinr1_jax.taxonomy import Taxonomy

RESPONSE = ("<thinking>A well-defined brown macule with a regular border and even pigment; no scale, "
            "no ulceration. Compared with melanoma, the border is regular.</thinking>"
            "<diagnosis>melanocytic nevus, a benign melanocytic lesion.</diagnosis>")


def _toy_taxonomy() -> Taxonomy:
    specs = [{"name": "root", "parent": None, "malignancy": "benign"}]
    specs += [{"name": f"group {g}", "parent": "root"} for g in range(4)]
    specs += [{"name": f"disease {g}.{d}", "parent": f"group {g}"} for g in range(4) for d in range(4)]
    return Taxonomy(specs)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = get_config()
    d = cfg.data
    tok = build_embedded_tokenizer([RESPONSE, prompts.mcq_prompt(["a", "b", "c", "d"])] * 20, 600)
    model_cfg = tiny_config(1024, **tok.model_token_ids())
    tax = _toy_taxonomy()
    rng = np.random.default_rng(0)
    leaves = tax.leaves()
    examples = []
    for i in range(args.examples):
        node = leaves[i % len(leaves)]
        examples.append({"id": f"bench{i}", "dataset": "bench", "node": node, "path": tax.path(node),
                         "malignancy": "benign",
                         "image": rng.integers(0, 256, (d.image_size, d.image_size, 3), dtype=np.uint8)})
    pixels = dict(min_pixels=d.min_pixels, max_pixels=d.max_pixels)
    by_id = {ex["id"]: ex for ex in examples}
    questions = tasks.mcq_questions(examples, tax, seed=0)

    def sft_encode(ex):
        return pipeline.encode_sft(tok, "Describe the lesion and diagnose it.", RESPONSE, ex["image"],
                                   model_cfg, example_id=ex["id"], **pixels)

    def rl_encode(q):
        return pipeline.encode_question(tok, q, by_id[q.example_id]["image"], model_cfg, **pixels)

    def run(items, encode, collate):
        cold, warm = [], []
        for _ in range(args.repeats):
            it = pipeline.BatchIterator(items, args.batch_size, seed=0, encode_fn=encode,
                                        collate_fn=collate, num_epochs=2)
            steps = it.steps_per_epoch
            cold.append(_seconds(lambda: [next(it) for _ in range(steps)]))
            warm.append(_seconds(lambda: [next(it) for _ in range(steps)]))
        return (common.throughput(common.timing(cold), len(items), "examples"),
                common.throughput(common.timing(warm), len(items), "examples"))

    bs = args.batch_size
    sft_cold, sft_warm = run(examples, sft_encode,
                             lambda e: pipeline.collate_sft(e, d.max_seq_len, tok.pad_id, batch_size=bs))
    rl_cold, rl_warm = run(questions, rl_encode,
                           lambda e: pipeline.collate_prompts(e, d.max_seq_len, tok.pad_id, batch_size=bs))
    result = {
        "benchmark": "pipeline", "examples": args.examples, "batch_size": bs, "image_size": d.image_size,
        "seq_len": d.max_seq_len,
        "sft_cold": sft_cold, "sft_warm": sft_warm, "rl_cold": rl_cold, "rl_warm": rl_warm,
        "default_run_sft_examples": cfg.sft.steps * cfg.sft.batch_size,
        "default_run_rl_prompts": cfg.rl.steps * cfg.rl.batch_size,
    }
    return common.emit(result)


if __name__ == "__main__":
    main()
