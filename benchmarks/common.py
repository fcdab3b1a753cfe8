"""Timing and machine-info helpers shared by every benchmark.

Every timed figure is a `Timing`: warm-up calls (compilation, allocator) are excluded, then
`repeats` timed calls give the median with min and max; a figure whose spread (max - min) is
more than NOISY_SPREAD of its median is flagged `noisy` (another process shared the CPU, a
page fault storm, ...), so a reader knows not to trust it to two digits.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

NOISY_SPREAD = 0.2


def timing(times: list[float]) -> dict[str, Any]:
    """Median / min / max seconds of repeated runs and the noisy flag."""
    if not times:
        raise ValueError("timing: no measurements")
    med = statistics.median(times)
    lo, hi = min(times), max(times)
    return {"median_s": med, "min_s": lo, "max_s": hi, "repeats": len(times),
            "noisy": bool(med > 0 and (hi - lo) / med > NOISY_SPREAD)}


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 3,
            sync: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Time `fn()` after `warmup` untimed calls. `sync(result)` blocks until asynchronous work
    (a jax dispatch) has finished, so the clock stops when the result exists."""
    if repeats < 1:
        raise ValueError(f"time_fn: repeats={repeats} must be >= 1")
    sync = sync or (lambda r: r)
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return timing(times)


def throughput(t: dict[str, Any], items: float, unit: str) -> dict[str, Any]:
    """`items` per second of a Timing: the median rate and the range (min rate from max time)."""
    return {f"{unit}_per_s": items / t["median_s"], f"{unit}_per_s_min": items / t["max_s"],
            f"{unit}_per_s_max": items / t["min_s"], "noisy": t["noisy"], "timing": t}


def minor_faults() -> int:
    """Minor page faults of this process so far (first touches of freshly mapped memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def paired(fns: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5,
           sync: Callable[[Any], Any] | None = None, turn: int = 1) -> dict[str, dict[str, Any]]:
    """Time several workloads in alternating turns (a, b, c, a, b, c, ...), so a change in the
    machine's load during the run hits every one alike and their ratio stays fair. A turn is
    one untimed call then `turn` timed calls back to back, as a training loop runs them:
    with turn=1 (one timed call per turn, no untimed one) each call instead starts right
    after another workload, on caches it evicted and (torch) OpenMP threads still spinning.
    Per name: a Timing of `repeats` calls (rounded up to whole turns) plus each call's
    seconds and minor page faults (a call that faults its buffers in shows thousands)."""
    sync = sync or (lambda r: r)
    for fn in fns.values():
        for _ in range(warmup):
            sync(fn())
    times: dict[str, list[float]] = {n: [] for n in fns}
    faults: dict[str, list[int]] = {n: [] for n in fns}
    for _ in range(-(-repeats // turn)):
        for name, fn in fns.items():
            if turn > 1:
                sync(fn())
            for _ in range(turn):
                f0, start = minor_faults(), time.perf_counter()
                sync(fn())
                times[name].append(time.perf_counter() - start)
                faults[name].append(minor_faults() - f0)
    return {n: {**timing(times[n]), "times_s": times[n], "minor_faults": faults[n],
                "minor_faults_median": statistics.median(faults[n]),
                "minor_faults_max": max(faults[n])} for n in fns}


def torch_thread_sides(name: str, fn: Callable[[], Any]) -> dict[str, Callable[[], Any]]:
    """`fn` (a torch workload) as one side per intra-op thread count, 1 and torch's default,
    named "name@<n>t", each setting its thread count before it runs. Timed in the same turns
    as everything else (`paired`), then collapsed by `fastest_torch_threads`, so the baseline
    runs at whichever count is faster under the load that the timed calls actually met: on a
    shared machine OpenMP threads waiting on a descheduled sibling can make the default many
    times slower, and a count chosen by a probe before the timing can go stale when the load
    changes during it (measured here: torch at 2 threads 97-164 ms a step within one run)."""
    import torch

    default = torch.get_num_threads()

    def at(n: int) -> Callable[[], Any]:
        def call() -> Any:
            torch.set_num_threads(n)
            return fn()
        return call
    return {f"{name}@{n}t": at(n) for n in sorted({1, default})}


def fastest_torch_threads(timed: dict[str, dict[str, Any]], name: str
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Timing of `name`'s fastest thread-count side by median, {"threads", "median_s"
    per thread count}) from `paired` results of `torch_thread_sides(name, ...)`; those sides
    are removed from `timed`."""
    # "name@2t" -> 2: the thread count each side's name carries.
    sides = {int(k[len(name) + 1:-1]): timed.pop(k)
             for k in [k for k in timed if k.startswith(f"{name}@")]}
    if not sides:
        raise ValueError(f"fastest_torch_threads: no '{name}@<n>t' sides in {sorted(timed)}")
    best = min(sides, key=lambda n: sides[n]["median_s"])
    return sides[best], {"threads": best,
                         "median_s": {str(n): t["median_s"] for n, t in sides.items()}}


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peak(dtypes: tuple[str, ...] = ("float32", "bfloat16"), n: int = 2048,
                calls: int = 5) -> dict[str, float]:
    """Measured XLA matmul FLOP/s of an n x n x n product per dtype (best of `calls`), with a
    float32 result as the model's products have (model.matmul: a bf16 product returning bf16
    runs at half the rate on XLA:CPU): the machine's practical peak, now, under whatever load
    it has, for the MFU figures."""
    import jax
    import jax.numpy as jnp

    out = {}
    for dt in dtypes:
        a = jnp.ones((n, n), dt)
        mm = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
        block(mm(a))
        out[dt] = 2 * n ** 3 / min(_seconds(lambda: block(mm(a))) for _ in range(calls))
    return out


def train_flops(cfg: Any, batch_size: int, seq_len: int, image_patches: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward; 2 per
    multiply-add): every text and vision linear layer and the LM head on its tokens, causal
    attention scores and values (S^2 / 2 per head), full-window vision attention ignored."""
    t, v = cfg.text, cfg.vision
    q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    per_layer = t.hidden_size * (2 * q + 2 * kv) + 3 * t.hidden_size * t.intermediate_size
    text = t.num_hidden_layers * per_layer + t.hidden_size * t.vocab_size
    attn = t.num_hidden_layers * 2 * q * seq_len / 2       # per token: QK + PV over S/2 keys
    vis_layer = 4 * v.hidden_size ** 2 + 3 * v.hidden_size * v.intermediate_size
    merged = v.hidden_size * v.spatial_merge_size ** 2
    vision = (v.patch_dim * v.hidden_size + v.depth * vis_layer
              + (merged * merged + merged * v.out_hidden_size) / v.spatial_merge_size ** 2)
    tokens = batch_size * seq_len
    return 6.0 * (tokens * (text + attn) + batch_size * image_patches * vision)


def block(tree: Any) -> Any:
    """Wait for every jax array in `tree` (no-op for host values)."""
    import jax
    return jax.block_until_ready(tree)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, load, library versions, date."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": _version("jax"), "flax": _version("flax"), "optax": _version("optax"),
        "torch": _version("torch"), "transformers": _version("transformers"),
    }


def emit(result: dict[str, Any]) -> dict[str, Any]:
    """Print a benchmark's result as the last stdout line (the runner parses it)."""
    result = {**result, "peak_rss_bytes": peak_rss_bytes(),
              "load_avg_1_5_15_end": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(result), flush=True)
    return result


# ---- the model pair every side-by-side benchmark runs ------------------------------------------

def tiny_model_pair(vocab_size: int, seed: int = 0, attn_implementation: str = "sdpa",
                    **overrides: Any) -> tuple[Any, Any, Any]:
    """(cfg, our variables, transformers model) of one random tiny Qwen2.5-VL: transformers
    builds and saves it, ours loads the same weights through hf_io. The torch model is reloaded
    with `attn_implementation` (transformers' default sdpa is its fastest CPU path)."""
    import tempfile

    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from skinr1_jax.model import tiny_config
    from skinr1_jax.model.convert import write_random_hf_checkpoint
    from skinr1_jax.model.hf_io import load_hf

    with tempfile.TemporaryDirectory() as tmp:
        write_random_hf_checkpoint(tiny_config(vocab_size, **overrides), tmp, seed=seed)
        cfg, variables = load_hf(tmp)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            tmp, dtype=torch.float32, attn_implementation=attn_implementation)
    return cfg, variables, model


def model_apply_fn(cfg: Any, image_grid: tuple[int, int, int] | None) -> Callable[..., Any]:
    """The train step's `apply_fn(variables, inputs, rng, deterministic) -> logits` for our
    Qwen2.5-VL on batches whose images all have grid `image_grid` (t, h, w). The (static)
    number of images is read from pixel_values' shape, so one apply_fn serves SFT rows, RL
    rows and micro-batches alike."""
    from skinr1_jax.model import forward

    per_image = None if image_grid is None else int(np.prod(image_grid))

    def apply_fn(variables, inputs, rng, deterministic):
        grid = None
        if inputs.get("pixel_values") is not None:
            n, rest = divmod(inputs["pixel_values"].shape[0], per_image)
            if rest:
                raise ValueError(f"pixel_values has {inputs['pixel_values'].shape[0]} patches, "
                                 f"not a multiple of {per_image} per image {image_grid}")
            grid = (tuple(int(v) for v in image_grid),) * n
        logits, _ = forward(cfg, variables, inputs, grid_thw=grid, deterministic=deterministic,
                            rngs=None if deterministic else {"dropout": rng})
        return logits
    return apply_fn


def sft_batch(cfg: Any, batch_size: int, seq_len: int, image_patches: int = 8,
              seed: int = 0) -> tuple[dict[str, Any], tuple]:
    """A full-length SFT batch of text + one image + text per row (no padding), the text after
    the image being the assistant target. Returns (host batch for the step, grid_thw)."""
    from skinr1_jax.data.pipeline import target_positions
    from skinr1_jax.model.convert import random_batch

    merge2 = cfg.vision.spatial_merge_size ** 2
    image_tokens = image_patches * image_patches // merge2 + 2   # + vision start / end
    text_len = (seq_len - image_tokens) // 2
    if text_len < 1 or 2 * text_len + image_tokens != seq_len:
        raise ValueError(f"seq_len={seq_len}: needs an even number of text tokens around the "
                         f"{image_tokens} image tokens")
    grid = ((1, image_patches, image_patches),) * batch_size
    b = random_batch(cfg, grid, seed=seed, text_len=text_len, batch_size=batch_size)
    loss_mask = np.zeros_like(b["input_ids"])
    loss_mask[:, text_len + image_tokens:] = 1
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values")}
    batch["loss_mask"] = loss_mask
    # As the SFT stage does (data.max_target_tokens): logits at the target positions only.
    batch["target_positions"] = target_positions(loss_mask, seq_len - text_len - image_tokens)
    return batch, b["grid_thw"]


def train_step(cfg: Any, variables: Any, image_grid: tuple[int, int, int], mesh: Any, *,
               sft_example: Any = None, rl_example: Any = None, step_cfg: Any = None,
               lr: float = 1e-4) -> tuple[Any, Any, Any]:
    """(jitted TrainStep, TrainState, state shardings) of full fine-tuning with our AdamW
    (grad clipping 1.0, weight decay 0.01); pure SFT unless `step_cfg` says otherwise.
    variables=None initialises random parameters directly on the devices."""
    import jax

    from skinr1_jax.model import abstract_variables, init_variables
    from skinr1_jax.train import optim, sharding as shd, state as st, step as stp

    # As `python -m launch` builds it (sft.fused_optimizer): fused where the mesh allows.
    opt = optim.make_optimizer(lr, total_steps=1000, warmup_ratio=0.0, weight_decay=0.01,
                               grad_clip=1.0, fused=shd.replicates_parameters(mesh))
    if variables is None:
        state, shardings = st.create_train_state(lambda r: init_variables(cfg, r), opt, mesh,
                                                 jax.random.PRNGKey(0), lora=False)
    else:
        shardings = st.state_shardings(abstract_variables(cfg), opt, mesh, lora=False)
        state = st.state_from_variables(variables, opt, shardings, jax.random.PRNGKey(0),
                                        lora=False)
    step_cfg = step_cfg or stp.StepConfig(lambda_sft=1.0, lambda_rl=0.0)
    step = stp.make_train_step(model_apply_fn(cfg, image_grid), step_cfg, opt, mesh, shardings,
                               sft_example=sft_example, rl_example=rl_example)
    return step, state, shardings


def hf_inputs(batch: dict[str, Any], grid_thw: Any, image_token_id: int,
              device: Any = None) -> dict[str, Any]:
    """transformers Qwen2.5-VL keyword inputs of one of our host batches (transformers computes
    its own 3-D positions from these)."""
    import torch

    ids = torch.as_tensor(np.asarray(batch["input_ids"]), dtype=torch.long)
    out = dict(input_ids=ids,
               attention_mask=torch.as_tensor(np.asarray(batch["attention_mask"]),
                                              dtype=torch.long),
               mm_token_type_ids=(ids == image_token_id).to(torch.int32),
               pixel_values=torch.as_tensor(np.asarray(batch["pixel_values"])),
               image_grid_thw=torch.as_tensor(np.asarray(grid_thw), dtype=torch.long))
    return {k: v.to(device) for k, v in out.items()} if device is not None else out
