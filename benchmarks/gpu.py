"""GPU figures, when this machine has one: the SFT step (full fine-tuning, bf16, per-layer
remat) of a Qwen2.5-VL-3B-shaped random model with its model FLOPs utilisation
(6 * params * tokens / step time / the GPU's dense bf16 peak), and greedy decode throughput at
batch 64 and 256; ours against transformers + torch (when torch sees the GPU) for both.

Without a GPU the result is {"skipped": "no GPU"}. Each part runs in its own process so one
framework's allocator never holds memory the other needs. `--dry-run` runs every part on the
CPU with the tiny model (no MFU), to check the code path on a machine without a GPU.

    python -m benchmarks.gpu [--dry-run] [--repeats 3]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from benchmarks import common

# Dense bf16 tensor-core peak, FLOP/s, by device-name substring (first match wins).
PEAK_BF16_FLOPS = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12),
    ("A10", 125e12), ("RTX 4090", 165e12), ("V100", 125e12),
)
PARTS = ("ours_sft", "torch_sft", "ours_decode", "torch_decode")


def peak_flops(device_name: str) -> float | None:
    name = device_name.upper()
    for key, flops in PEAK_BF16_FLOPS:
        if key.upper() in name:
            return flops
    return None


def shapes(dry_run: bool) -> dict[str, Any]:
    """Benchmark shapes: the real ones, or tiny ones for a CPU dry run."""
    if dry_run:
        return dict(sft_batch=2, sft_seq_len=128, image_patches=8, decode_batches=(4, 8),
                    prompt_text=8, new_tokens=16)
    # 16x16 patches of 14 px: a 224-px image, 64 image tokens after the 2x2 merge
    return dict(sft_batch=8, sft_seq_len=1024, image_patches=16, decode_batches=(64, 256),
                prompt_text=16, new_tokens=128)


def model_config(dry_run: bool) -> Any:
    from skinr1_jax.model import qwen2_5_vl_3b_config, tiny_config

    if dry_run:
        return tiny_config(2048, dtype="bfloat16", param_dtype="bfloat16")
    return qwen2_5_vl_3b_config(dtype="bfloat16", param_dtype="bfloat16", remat=True)


def _torch_model(cfg: Any, device: Any) -> Any:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from skinr1_jax.model import config_to_hf

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        Qwen2_5_VLConfig(**config_to_hf(cfg)), attn_implementation="sdpa",
        dtype=torch.bfloat16).to(device)
    if cfg.remat:
        model.gradient_checkpointing_enable()
    return model


def run_part(part: str, dry_run: bool, repeats: int) -> dict[str, Any]:
    """One part in this process: a framework, a workload."""
    from skinr1_jax.model.convert import random_batch

    cfg, sh = model_config(dry_run), shapes(dry_run)
    patches = sh["image_patches"]
    if part.endswith("_sft"):
        batch, grid = common.sft_batch(cfg, sh["sft_batch"], sh["sft_seq_len"], patches)
        tokens = batch["input_ids"].size
        if part == "ours_sft":
            import jax

            from skinr1_jax.train import sharding as shd

            mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
            dev_batch = shd.shard_batch(batch, mesh)
            step, state, _ = common.train_step(cfg, None, grid[0], mesh, sft_example=dev_batch)
            params = sum(x.size for x in jax.tree.leaves(state.trainable))
            holder = {"state": state}

            def fn():
                holder["state"], metrics = step(holder["state"], dev_batch, None)
                return metrics
            t = common.time_fn(fn, warmup=2, repeats=repeats, sync=common.block)
        else:
            import torch

            from benchmarks.sft_step import torch_step

            device = "cpu" if dry_run else "cuda"
            model = _torch_model(cfg, device)
            params = sum(p.numel() for p in model.parameters())
            t = common.time_fn(torch_step(model, batch, grid, 1e-4, device), warmup=2,
                               repeats=repeats)
        return {"tokens": tokens, "params": int(params), "batch_size": sh["sft_batch"],
                "seq_len": sh["sft_seq_len"], **common.throughput(t, tokens, "tokens")}

    out = {}
    grid1 = (1, patches, patches)
    if part == "ours_decode":
        import jax

        from skinr1_jax.model import init_variables, unbox
        from skinr1_jax.model.sampler import sample

        variables = jax.jit(lambda r: unbox(init_variables(cfg, r)))(jax.random.PRNGKey(0))
    else:
        import torch

        device = "cpu" if dry_run else "cuda"
        model = _torch_model(cfg, device).eval()
    for b in sh["decode_batches"]:
        batch = random_batch(cfg, (grid1,) * b, seed=0, text_len=sh["prompt_text"], batch_size=b)
        n = sh["new_tokens"]
        if part == "ours_decode":
            def fn():
                return sample(cfg, variables, batch, temperature=0.0, max_new_tokens=n,
                              eos_ids=(), rng=jax.random.key(0), pad_id=0).tokens
        else:
            inputs = common.hf_inputs(batch, batch["grid_thw"], cfg.image_token_id, device)

            def fn():
                model.model.rope_deltas = None
                with torch.inference_mode():
                    return model.generate(**inputs, do_sample=False, max_new_tokens=n,
                                          min_new_tokens=n, eos_token_id=None,
                                          pad_token_id=0).cpu()
        t = common.time_fn(fn, warmup=1, repeats=repeats)
        out[f"batch_{b}"] = {"prompt_len": int(batch["input_ids"].shape[1]), "new_tokens": n,
                             **common.throughput(t, b * n, "tokens")}
    return out


def gpu_name() -> str | None:
    """The first GPU's name as jax reports it, or None (probed in a child process so this one
    never initialises a GPU backend)."""
    code = ("import jax\ntry:\n    d = jax.devices('gpu')\nexcept RuntimeError:\n    d = []\n"
            "print(d[0].device_kind if d else '')")
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    name = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return name or None


def _child(part: str, dry_run: bool, repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--part", part, "--repeats", str(repeats)]
    cmd += ["--dry-run"] if dry_run else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def run(dry_run: bool = False, repeats: int = 3) -> dict[str, Any]:
    name = "cpu (dry run)" if dry_run else gpu_name()
    if name is None:
        return {"benchmark": "gpu", "skipped": "no GPU"}
    parts = {p: _child(p, dry_run, repeats) for p in PARTS}
    result: dict[str, Any] = {"benchmark": "gpu", "gpu": name, "dry_run": dry_run,
                              "model": "tiny" if dry_run else "qwen2_5_vl_3b (random, bf16, remat)",
                              "parts": parts}
    peak = None if dry_run else peak_flops(name)
    ours, theirs = parts["ours_sft"], parts["torch_sft"]
    result["peak_bf16_flops"] = peak
    if "tokens_per_s" in ours:
        for key, r in (("ours", ours), ("transformers", theirs)):
            if "tokens_per_s" in r and peak:
                r["mfu"] = 6 * r["params"] * r["tokens_per_s"] / peak
        if "tokens_per_s" in theirs:
            result["sft_step_speedup"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
    dec_ours, dec_theirs = parts["ours_decode"], parts["torch_decode"]
    result["decode_speedup"] = {
        b: dec_ours[b]["tokens_per_s"] / dec_theirs[b]["tokens_per_s"]
        for b in dec_ours if b.startswith("batch_") and b in dec_theirs}
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part", choices=PARTS)
    args = parser.parse_args(argv)
    if args.part:
        return common.emit(run_part(args.part, args.dry_run, args.repeats))
    return common.emit(run(args.dry_run, args.repeats))


if __name__ == "__main__":
    main()
