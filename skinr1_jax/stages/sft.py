"""Stage `sft`: supervised fine-tuning on the verified trajectories (loss on the assistant
turn only), writing models/sft."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ml_collections import ConfigDict

from skinr1_jax.stages import common


# Runs of this many batches are sorted by length before they are cut into batches (with
# `length_bucket`): long enough to group similar lengths, short enough to keep batches mixed.
GROUP_BATCHES = 32


def length_buckets(seq_len: int, step: int) -> tuple[int, ...]:
    """Padded lengths a batch may take: multiples of `step` below `seq_len`, then `seq_len`
    (step 0: `seq_len` only)."""
    return tuple(range(step, seq_len, step)) + (seq_len,) if step > 0 else (seq_len,)


class ItemSource:
    """Batches for the SFT loss from a resumable, shuffled iterator over {example_id, prompt,
    response} items whose images are in `images` (by example id). With `length_bucket` > 0,
    rows are grouped by length and each batch is padded to the smallest multiple of it that
    holds its longest row (one compiled step per length used); 0 pads every batch to
    `seq_len`."""

    def __init__(self, items: list[dict], images: Mapping[str, Any], enc: Any, tokenizer: Any, *,
                 seq_len: int, batch_size: int, seed: int, max_targets: int = 0,
                 seq_len_key: str = "data.max_seq_len", length_bucket: int = 0):
        from skinr1_jax.data.pipeline import BatchIterator, collate_sft
        from skinr1_jax.train.distributed import data_shard

        self.items = items
        # Each process encodes only its block of every global batch.
        shard, shards = data_shard()
        pad = tokenizer.pad_id

        def encode(it: dict) -> dict:
            return enc.sft(it["prompt"], it["response"], images[it["example_id"]], it["example_id"])

        buckets = length_buckets(int(seq_len), int(length_bucket))
        # Every process measures every item, so all pick the same bucket.
        lengths = enc.sft_lengths(items, images) if length_bucket > 0 else None
        self.iterator = BatchIterator(
            items, int(batch_size), seed, shard_index=shard, shard_count=shards,
            encode_fn=encode, lengths=lengths, group_batches=GROUP_BATCHES,
            collate_fn=lambda rows, length=None: collate_sft(
                rows, buckets, pad, batch_size=self.iterator.rows, max_targets=int(max_targets),
                length=length))
        first = items[0]
        self.grid = common.image_grid(enc.sft(first["prompt"], "", images[first["example_id"]],
                                              first["example_id"]))
        self.truncated = 0
        self.seq_len, self.seq_len_key, self.warned = int(seq_len), seq_len_key, False

    def example(self) -> dict:
        """The first batch, without advancing: fixes the step's input structure."""
        state, truncated = self.iterator.get_state(), self.truncated
        batch = self.next()
        self.iterator.restore(state)
        self.truncated = truncated
        return batch

    def next(self) -> dict:
        batch = next(self.iterator)
        truncated = int(batch.get("num_truncated", 0))
        if truncated and not self.warned:
            self.warned = True
            # A truncated row loses the end of its response, i.e. the answer: say so once,
            # loudly (the count goes on in the metrics as sft_truncated_total).
            print(f"[warning] rows longer than {self.seq_len_key}={self.seq_len} tokens are "
                  "truncated, losing the end of their answers; raise it")
        self.truncated += truncated
        return common.step_arrays(batch)

    def batches(self, state, step):
        return self.next(), None, {"sft_truncated_total": float(self.truncated)}

    def get_state(self) -> dict[str, int]:
        return {f"sft_{k}": int(v) for k, v in self.iterator.get_state().items()}

    def restore(self, data_state: Mapping[str, int]) -> None:
        self.iterator.restore({k[4:]: v for k, v in data_state.items() if k.startswith("sft_")})


def sft_source(config: ConfigDict, workdir: Path, enc: Any, tokenizer: Any,
               seed_offset: int = 0, bucketed: bool = True) -> ItemSource:
    """The SFT set (trajectories + task-format twins) as batches of `sft.batch_size`;
    `bucketed=False` pads every batch to data.max_seq_len (RL's SFT term: one compiled step)."""
    from skinr1_jax.data.sft_mix import build_sft_items

    taxonomy, kb = common.taxonomy_and_kb()
    dense = common.dataset_splits(config, workdir)["dense_train"]
    trajectories = common.read_jsonl(workdir / "trajectories.jsonl")
    items = build_sft_items(trajectories, dense, taxonomy, kb.ddx_graph(), config.generate,
                            config.generate.question_share, config.seed)
    return ItemSource(items, {str(e["id"]): e["image"] for e in dense}, enc, tokenizer,
                      seq_len=int(config.data.max_seq_len), batch_size=int(config.sft.batch_size),
                      seed=config.seed + seed_offset,
                      max_targets=int(config.data.max_target_tokens),
                      length_bucket=int(config.data.length_bucket) if bucketed else 0)


def run(config: ConfigDict, workdir: Path) -> dict:
    from skinr1_jax.model.saved import save_model
    from skinr1_jax.stages.loop import train
    from skinr1_jax.train.step import StepConfig

    tokenizer = common.load_tokenizer(config, workdir)
    model_cfg = common.model_config(config, tokenizer)
    variables = common.base_variables(config, workdir, model_cfg, tokenizer)
    out = common.models_dir(workdir) / "sft"
    if config.sft.steps == 0:
        print("[sft] sft.steps = 0: models/sft is the base model")
        save_model(out, model_cfg, variables, tokenizer)
        return {"steps": 0}
    enc = common.encoder(config, tokenizer, model_cfg)
    source = sft_source(config, workdir, enc, tokenizer)
    print(f"[sft] {len(source.items)} items ({len(source.items) / config.sft.batch_size:.0f} "
          f"steps per epoch), {config.sft.steps} steps of {config.sft.batch_size}")
    example = source.example()
    result = train("sft", config, workdir, model_cfg=model_cfg, variables=variables,
                   grid=source.grid, source=source, step_cfg=StepConfig.from_config(config, "sft"),
                   steps=int(config.sft.steps), learning_rate=float(config.sft.learning_rate),
                   warmup_ratio=float(config.sft.warmup_ratio), example_batches=(example, None))
    save_model(out, model_cfg, result.variables, tokenizer)
    print(f"[sft] done in {result.seconds:.0f}s; loss {result.last_metrics.get('loss', float('nan')):.4f}"
          f" -> {out}")
    return {"steps": result.steps, "seconds": result.seconds, **result.last_metrics}
