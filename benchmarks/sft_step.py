"""SFT step throughput: our jitted full fine-tuning step (forward, backward, AdamW with grad
clipping) against transformers + torch doing the same (loss.backward, clip_grad_norm_,
torch.optim.AdamW.step) on one random tiny Qwen2.5-VL whose weights both sides share (built by
transformers, loaded into ours with hf_io), with the same batch, sequence length and image.

    python -m benchmarks.sft_step [--batch-size 8] [--seq-len 128] [--repeats 5]

Prints one JSON line; tokens/s counts every input token of the batch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import jax

from benchmarks import common


def torch_step(model: Any, batch: dict[str, Any], grid_thw: Any, lr: float,
               device: Any = None) -> Callable[[], float]:
    """transformers' training step on `batch`: forward with labels (the same token-mean
    cross-entropy over loss_mask targets), backward, grad clipping 1.0, AdamW. Returns the
    loss, read back to the host (so each call ends synchronised)."""
    import torch

    inputs = common.hf_inputs(batch, grid_thw, model.config.image_token_id, device)
    mask = torch.as_tensor(batch["loss_mask"], device=inputs["input_ids"].device)
    inputs["labels"] = inputs["input_ids"].masked_fill(mask == 0, -100)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

    def step() -> float:
        model.model.rope_deltas = None
        opt.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()
    return step


def run(batch_size: int = 8, seq_len: int = 128, repeats: int = 5, vocab_size: int = 2048,
        lr: float = 1e-4) -> dict[str, Any]:
    from skinr1_jax.train import sharding as shd

    cfg, variables, model = common.tiny_model_pair(vocab_size)
    batch, grid = common.sft_batch(cfg, batch_size, seq_len)
    tokens = batch_size * seq_len

    mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    device_batch = shd.shard_batch(batch, mesh)
    step, state, _ = common.train_step(cfg, variables, grid[0], mesh, sft_example=device_batch,
                                       lr=lr)
    holder = {"state": state}
    losses = {}

    def ours():
        holder["state"], metrics = step(holder["state"], device_batch, None)
        return metrics

    first = ours()                     # the compile call, timed by the runner's wall clock
    losses["ours_first_loss"] = float(first["sft_loss"])
    ours_t = common.time_fn(ours, warmup=1, repeats=repeats, sync=common.block)

    theirs_step = torch_step(model, batch, grid, lr)
    losses["transformers_first_loss"] = theirs_step()
    theirs_t, threads = common.time_torch(theirs_step, warmup=1, repeats=repeats)

    ours_r = common.throughput(ours_t, tokens, "tokens")
    theirs_r = common.throughput(theirs_t, tokens, "tokens")
    return {
        "benchmark": "sft_step", "batch_size": batch_size, "seq_len": seq_len,
        "image_grid_thw": list(grid[0]), "vocab_size": vocab_size,
        "params": int(sum(x.size for x in jax.tree.leaves(variables))),
        "ours": ours_r, "transformers": theirs_r,
        "speedup": ours_r["tokens_per_s"] / theirs_r["tokens_per_s"],
        **losses, "torch_threads": threads,
        "transformers_attn": model.config._attn_implementation,
        "jax_backend": jax.default_backend(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    return common.emit(run(args.batch_size, args.seq_len, args.repeats))


if __name__ == "__main__":
    main()
