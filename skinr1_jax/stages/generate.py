"""Stage `generate`: build the dataset, write verified reasoning trajectories, and (for the
embedded model) build the tokenizer from everything the model will read and write."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

from ml_collections import ConfigDict

from skinr1_jax.stages import common

log = logging.getLogger(__name__)


def run(config: ConfigDict, workdir: Path) -> dict:
    from skinr1_jax.data.sft_mix import build_sft_items
    from skinr1_jax.trajectories import format_summary, generate_trajectories, summarize

    taxonomy, kb = common.taxonomy_and_kb()
    splits = common.dataset_splits(config, workdir)
    sizes = {k: len(v) for k, v in splits.items()}
    print(f"[generate] dataset {config.data.dataset}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    dense = splits["dense_train"]
    if not dense:
        raise ValueError(f"dataset {config.data.dataset} has no training examples for trajectories")
    result = generate_trajectories(_progress(dense, "trajectories"), taxonomy, kb, config.generate,
                                   config.seed)
    if not result.trajectories:
        raise RuntimeError(f"no trajectory passed verification; rejected: {result.rejected}")
    lines = "".join(json.dumps(t, sort_keys=True) + "\n" for t in result.trajectories)
    common.write_atomic(workdir / "trajectories.jsonl", lines)

    items = build_sft_items(result.trajectories, dense, taxonomy, kb.ddx_graph(), config.generate,
                            config.generate.question_share, config.seed)
    if config.model.name == "tiny":
        from skinr1_jax.train.distributed import main_process_first

        # Process 0 builds and writes the tokenizer; the others load what it wrote.
        with main_process_first("generate:tokenizer") as main:
            tokenizer = (_build_tokenizer(config, workdir, items, dense, taxonomy, kb) if main
                         else common.load_tokenizer(config, workdir))
        summary = summarize(result, tokenize=tokenizer.encode)
    else:
        summary = summarize(result)
    summary["dataset"] = sizes
    summary["sft_items"] = len(items)
    common.write_json(workdir / "generate_summary.json", summary)
    print(format_summary(summary))
    return summary


def _progress(items: list, what: str) -> Iterator:
    from tqdm import tqdm

    return iter(tqdm(items, desc=f"[generate] {what}", unit="img", leave=False))


def _build_tokenizer(config: ConfigDict, workdir: Path, items: list[dict], dense: list[dict],
                     taxonomy, kb):
    """A byte-level BPE trained on the texts the model sees: prompts, responses, captions,
    every node name and synonym, every KB rule. Deterministic, so reruns give the same ids."""
    from skinr1_jax.data import tasks
    from skinr1_jax.model.tokenizer import build_embedded_tokenizer

    from skinr1_jax.data.captions import CAPTION_PROMPT, caption

    corpus = [item["prompt"] for item in items] + [item["response"] for item in items]
    corpus += [CAPTION_PROMPT] + [caption(ex["concepts"]) for ex in dense if ex["concepts"]]
    corpus += [tasks.open_question({"id": "x", "node": 1, "malignancy": "benign"}).prompt]
    for node in taxonomy.nodes:
        corpus.append(node.name)
        corpus.extend(node.synonyms)
    for node_id in kb.node_ids:
        corpus.extend(kb.rules(node_id))
    out = workdir / "tokenizer"
    tokenizer = build_embedded_tokenizer(corpus, config.model.vocab_size, out,
                                         option_labels=config.model.option_label_tokens)
    print(f"[generate] embedded tokenizer: {tokenizer.vocab_size} ids -> {out}")
    return tokenizer
