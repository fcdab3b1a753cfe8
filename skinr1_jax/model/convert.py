"""Hugging Face folder -> orbax parameter checkpoint, with an optional logit check against
`transformers` (torch is imported only for that check and for building random reference
checkpoints in tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from skinr1_jax.model.config import ModelConfig, config_to_hf
from skinr1_jax.model.hf_io import load_hf, merge_lora
from skinr1_jax.model.peft_io import load_adapter
from skinr1_jax.model.rope import GridTHW, get_rope_index
from skinr1_jax.model.vlm import Variables, forward


def random_batch(cfg: ModelConfig, grid_thw: GridTHW, seed: int = 0, text_len: int = 5,
                 batch_size: int = 1) -> dict[str, np.ndarray]:
    """Each row: text, then for every image <vision_start> image tokens <vision_end>, then text.
    Images are spread over the rows in order (row-major), text ids avoid special tokens."""
    rng = np.random.default_rng(seed)
    merge2 = cfg.vision.spatial_merge_size ** 2
    hi = min(cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id,
             cfg.video_token_id)
    per_row = [list(grid_thw[i::batch_size]) for i in range(batch_size)]
    rows = []
    for grids in per_row:
        ids = list(rng.integers(0, hi, text_len))
        for t, h, w in grids:
            ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * (t * h * w // merge2)
            ids += [cfg.vision_end_token_id] + list(rng.integers(0, hi, text_len))
        rows.append(ids)
    width = max(len(r) for r in rows)
    input_ids = np.zeros((batch_size, width), np.int32)
    mask = np.zeros((batch_size, width), np.int32)
    for i, r in enumerate(rows):  # left padding
        input_ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    order = [g for i in range(batch_size) for g in per_row[i]]
    n = sum(t * h * w for t, h, w in order)
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if n:
        batch["pixel_values"] = rng.standard_normal((n, cfg.vision.patch_dim)).astype(np.float32)
    batch["position_ids"], batch["rope_deltas"] = get_rope_index(cfg, input_ids, mask, tuple(order))
    batch["grid_thw"] = tuple(order)
    return batch


def write_random_hf_checkpoint(cfg: ModelConfig, out_dir: str | Path, seed: int = 0,
                               scale: float = 0.05) -> Any:
    """Build transformers' Qwen2_5_VLForConditionalGeneration from `cfg` with every weight
    random (norm weights around 1), save_pretrained it to out_dir and return the torch model."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    hf_cfg = Qwen2_5_VLConfig(**config_to_hf(cfg))
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        hf_cfg, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith(("norm.weight", "norm1.weight", "norm2.weight",
                                         "layernorm.weight", "ln_q.weight")) else 0.0
            p.copy_(base + scale * torch.randn_like(p))
    model.save_pretrained(str(out_dir))
    return model


def hf_logits(model: Any, batch: dict[str, Any]) -> np.ndarray:
    """Logits of a transformers Qwen2.5-VL model on a `random_batch`-style batch (letting
    transformers compute its own 3-D positions)."""
    import torch

    ids = torch.as_tensor(np.asarray(batch["input_ids"]), dtype=torch.long)
    kwargs = {"input_ids": ids,
              "attention_mask": torch.as_tensor(np.asarray(batch["attention_mask"]), dtype=torch.long),
              "mm_token_type_ids": (ids == model.config.image_token_id).to(torch.int32)}
    if batch.get("pixel_values") is not None:
        kwargs["pixel_values"] = torch.as_tensor(np.asarray(batch["pixel_values"]))
        kwargs["image_grid_thw"] = torch.as_tensor(np.asarray(batch["grid_thw"]), dtype=torch.long)
    with torch.no_grad():
        model.model.rope_deltas = None
        return model(**kwargs).logits.float().numpy()


def max_abs_logit_diff(cfg: ModelConfig, variables: Variables, model: Any,
                       batch: dict[str, Any]) -> float:
    """Max |ours - transformers| over the real (unpadded) positions of `batch`."""
    ours, _ = forward(cfg, variables, batch, grid_thw=batch.get("grid_thw") or None)
    theirs = hf_logits(model, batch)
    real = np.asarray(batch["attention_mask"]).astype(bool)
    return float(np.max(np.abs(np.asarray(ours)[real] - theirs[real])))


def convert(hf_dir: str | Path, out_dir: str | Path, verify: bool = False,
            adapter_dir: str | Path | None = None) -> float | None:
    """Load `hf_dir` (+ a PEFT adapter, merged) and save its params with orbax at `out_dir`.
    With verify=True run one random image+text batch through transformers (fp32) and through
    ours and return the max abs logit difference."""
    from skinr1_jax.train.checkpoint import save_params

    cfg, variables = load_hf(hf_dir)
    if adapter_dir:
        cfg, variables = load_adapter(adapter_dir, cfg, variables, merge=True)
    save_params(Path(out_dir).absolute(), jax.device_get(variables["params"]))
    if not verify:
        return None
    return _verify(hf_dir, cfg, variables, adapter_dir)


def _verify(hf_dir: str | Path, cfg: ModelConfig, variables: Variables,
            adapter_dir: str | Path | None) -> float:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(hf_dir), dtype=torch.float32, attn_implementation="eager").eval()
    if adapter_dir:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()
    m = cfg.vision.spatial_merge_size
    grid = ((1, 2 * m, 3 * m),)
    batch = random_batch(cfg.replace(dtype="float32", param_dtype="float32"), grid, seed=0)
    variables = {"params": merge_lora(cfg, variables)}
    cfg32 = cfg.replace(dtype="float32", param_dtype="float32", matmul_dtype=None, lora={"rank": 0})
    variables = jax.tree.map(lambda x: np.asarray(x, np.float32), variables)
    with jax.default_matmul_precision("highest"):
        return max_abs_logit_diff(cfg32, variables, model, batch)
