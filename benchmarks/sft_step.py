"""SFT step throughput: our jitted full fine-tuning step (forward, backward, AdamW with grad
clipping) against transformers + torch doing the same (loss.backward, clip_grad_norm_,
torch.optim.AdamW.step) on one random tiny Qwen2.5-VL whose weights both sides share (built by
transformers, loaded into ours with hf_io), with the same batch, sequence length and image.

    python -m benchmarks.sft_step [--batch-size 8] [--seq-len 128] [--repeats 9] [--turn 3]
                                  [--torch-compile]

The sides take turns (ours, ours bf16, torch, torch.compile, ours, ...) so load changes hit
all alike; a turn is one untimed step then `turn` timed ones back to back, as in training (a
step right after the other side's runs on caches that side evicted, and next to torch's
OpenMP threads still spinning: measured 27 ms for ours alone, 33-36 ms strictly alternated).
Each torch side is timed at 1 thread and at torch's default in the same turns, and the faster
median is its figure (common.torch_thread_sides), so the baseline gets its best thread count
under the load the timed steps met.
Reported per side: each step's seconds and minor page faults, median / min / max, the compile
time (first call minus the median), and MFU against the XLA matmul peak measured in the same
run. Also: our step with bfloat16 products (model.matmul_dtype; f32 activations, parameters and
optimizer) with its first-step loss difference from f32, against transformers in torch's mixed
precision (torch.autocast bfloat16, which also runs the products in bf16),
and with --torch-compile transformers under torch.compile (inductor) as a second baseline
(`python -m benchmarks --torch-compile`).
Prints one JSON line; tokens/s counts every input token of the batch.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

import jax

from benchmarks import common

IMAGE_SIDE = 8  # patches per image side: one 64-px image per row


def torch_step(model: Any, batch: dict[str, Any], grid_thw: Any, lr: float,
               device: Any = None, forward: Callable[..., Any] | None = None,
               bf16: bool = False) -> Callable[[], float]:
    """transformers' training step on `batch`: forward with labels (the same token-mean
    cross-entropy over loss_mask targets), backward, grad clipping 1.0, AdamW. Returns the
    loss, read back to the host (so each call ends synchronised). `forward` replaces
    model.__call__ (e.g. a torch.compile'd model); `bf16` runs the forward under
    torch.autocast(bfloat16), torch's mixed precision (f32 weights and optimizer, as ours)."""
    import contextlib

    import torch

    inputs = common.hf_inputs(batch, grid_thw, model.config.image_token_id, device)
    mask = torch.as_tensor(batch["loss_mask"], device=inputs["input_ids"].device)
    inputs["labels"] = inputs["input_ids"].masked_fill(mask == 0, -100)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    forward = forward or model

    def step() -> float:
        model.model.rope_deltas = None
        opt.zero_grad(set_to_none=True)
        with (torch.autocast(inputs["input_ids"].device.type, dtype=torch.bfloat16) if bf16
              else contextlib.nullcontext()):
            loss = forward(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()
    return step


def sized_overrides(hidden: int) -> dict[str, Any]:
    """tiny_config overrides of a model `hidden` wide (head_dim 32, MLP 2x, 2 query heads per
    KV head, like the tiny default at 128)."""
    return dict(text=dict(hidden_size=hidden, intermediate_size=2 * hidden,
                          num_attention_heads=hidden // 32, num_key_value_heads=max(1, hidden // 64)),
                vision=dict(out_hidden_size=hidden))


def our_step(cfg: Any, variables: Any, batch: dict[str, Any], grid: Any,
             lr: float) -> tuple[Callable[[], Any], float, float]:
    """(one step as a call, first-step loss, first call's seconds: compile + one step)."""
    from skinr1_jax.train import sharding as shd

    mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    device_batch = shd.shard_batch(batch, mesh)
    step, state, _ = common.train_step(cfg, variables, grid[0], mesh, sft_example=device_batch,
                                       lr=lr)
    holder = {"state": state}

    def call():
        holder["state"], metrics = step(holder["state"], device_batch, None)
        return metrics

    start = time.perf_counter()
    first = common.block(call())
    return call, float(first["sft_loss"]), time.perf_counter() - start


def run(batch_size: int = 8, seq_len: int = 128, repeats: int = 9, vocab_size: int = 2048,
        lr: float = 1e-4, hidden: int | None = None, variants: bool = True,
        torch_compile: bool = False, turn: int = 3, bf16: bool = False) -> dict[str, Any]:
    """Ours against transformers, each timed in turns of `turn` back-to-back steps after an
    untimed one (common.paired); with `variants`, also both in bf16; with `torch_compile`,
    transformers under torch.compile too (its compile alone takes minutes on 2 cores). `bf16`
    makes the headline sides themselves bf16 products (no variants then)."""
    import torch

    if bf16 and (variants or torch_compile):
        raise ValueError("sft_step.run: bf16 headline sides take no variants or torch.compile")
    cfg, variables, model = common.tiny_model_pair(
        vocab_size, **(sized_overrides(hidden) if hidden else {}))
    if bf16:
        cfg = cfg.replace(matmul_dtype="bfloat16")
    batch, grid = common.sft_batch(cfg, batch_size, seq_len, IMAGE_SIDE)
    tokens = batch_size * seq_len
    fns, first_loss, first_s = {}, {}, {}
    fns["ours"], first_loss["ours"], first_s["ours"] = our_step(cfg, variables, batch, grid, lr)
    if variants:
        fns["ours_bf16"], first_loss["ours_bf16"], first_s["ours_bf16"] = our_step(
            cfg.replace(matmul_dtype="bfloat16"), variables, batch, grid, lr)
    compiled_model = copy.deepcopy(model) if torch_compile else None
    # Each torch side updates its own copy of the weights.
    bf16_model = copy.deepcopy(model) if variants else None
    theirs = torch_step(model, batch, grid, lr, bf16=bf16)
    torch_fns = {"transformers": theirs}
    # The first step's loss before the timed steps update the weights: both sides
    # start from the same weights and batch, so it must equal ours (`first_loss_delta`).
    start = time.perf_counter()
    first_loss["transformers"] = theirs()
    first_s["transformers"] = time.perf_counter() - start
    if variants:
        torch_fns["transformers_bf16"] = torch_step(bf16_model, batch, grid, lr, bf16=True)
        start = time.perf_counter()
        first_loss["transformers_bf16"] = torch_fns["transformers_bf16"]()
        first_s["transformers_bf16"] = time.perf_counter() - start
    errors = {}
    if torch_compile:
        try:
            fn = torch_step(compiled_model, batch, grid, lr, forward=torch.compile(compiled_model))
            start = time.perf_counter()
            first_loss["torch_compile"] = fn()
            first_s["torch_compile"] = time.perf_counter() - start
            torch_fns["torch_compile"] = fn
        except Exception as e:  # recorded, not fatal: the eager baseline still stands
            errors["torch_compile"] = f"{type(e).__name__}: {str(e)[:500]}"
    load_start = [round(x, 2) for x in __import__("os").getloadavg()]
    for name, fn in torch_fns.items():
        fns.update(common.torch_thread_sides(name, fn))
    timed = common.paired(fns, warmup=1, repeats=repeats, sync=common.block, turn=turn)
    threads = {}
    for name in torch_fns:
        timed[name], threads[name] = common.fastest_torch_threads(timed, name)
    peak = common.matmul_peak()
    flops = common.train_flops(cfg, batch_size, seq_len, IMAGE_SIDE ** 2)
    sides = {}
    for name, t in timed.items():
        sides[name] = {**common.throughput(t, tokens, "tokens"),
                       "compile_s": first_s[name] - t["median_s"],
                       "first_loss": first_loss[name],
                       **({"torch_threads": threads[name]} if name in threads else {}),
                       "mfu": flops / t["median_s"] / peak[
                           "bfloat16" if bf16 or "bf16" in name else "float32"]}
    out = {
        "benchmark": "sft_step", "batch_size": batch_size, "seq_len": seq_len,
        "hidden": cfg.text.hidden_size, "image_grid_thw": list(grid[0]), "vocab_size": vocab_size,
        "compute_dtype": cfg.dtype, "matmul_dtype": cfg.product_dtype,
        "params": int(sum(x.size for x in jax.tree.leaves(variables))),
        "ours": sides.pop("ours"), "transformers": sides.pop("transformers"),
        "variants": sides, "errors": errors, "model_flops_per_step": flops,
        "matmul_peak_flops": peak, "torch_threads": threads["transformers"],
        "load_avg_timed": load_start,
        "transformers_attn": model.config._attn_implementation,
        "jax_backend": jax.default_backend(), "turn": turn,
    }
    out["speedup"] = out["ours"]["tokens_per_s"] / out["transformers"]["tokens_per_s"]
    out["first_loss_delta"] = out["ours"]["first_loss"] - out["transformers"]["first_loss"]
    if "ours_bf16" in sides:
        out["bf16_loss_delta"] = sides["ours_bf16"]["first_loss"] - out["ours"]["first_loss"]
        bf = sides["transformers_bf16"]
        out["bf16_speedup_vs_torch_bf16"] = sides["ours_bf16"]["tokens_per_s"] / bf["tokens_per_s"]
        out["torch_bf16_loss_delta"] = bf["first_loss"] - out["transformers"]["first_loss"]
    if "torch_compile" in sides:
        out["speedup_vs_torch_compile"] = (out["ours"]["tokens_per_s"]
                                           / sides["torch_compile"]["tokens_per_s"])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-variants", action="store_true",
                        help="only ours (f32) and transformers eager")
    parser.add_argument("--turn", type=int, default=3,
                        help="timed back-to-back steps per side per turn (1: strict alternation)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time transformers under torch.compile (minutes to compile)")
    args = parser.parse_args(argv)
    return common.emit(run(args.batch_size, args.seq_len, args.repeats,
                           variants=not args.no_variants, torch_compile=args.torch_compile,
                           turn=args.turn))


if __name__ == "__main__":
    main()
