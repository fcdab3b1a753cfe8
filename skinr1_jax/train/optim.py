"""AdamW with linear warm-up and cosine decay, global-norm clipping and weight decay."""

from __future__ import annotations

import optax


def make_schedule(lr: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    """Linear warm-up from 0 over `warmup_ratio * total_steps` updates, then cosine to 0."""
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps}: must be positive")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio={warmup_ratio}: must be in [0, 1)")
    warmup = int(round(warmup_ratio * total_steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=0.0)


def make_optimizer(lr: float, total_steps: int, warmup_ratio: float = 0.03,
                   weight_decay: float = 0.0, grad_clip: float = 1.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    """The optimizer of both stages. `total_steps` counts optimizer updates; gradient
    accumulation happens inside the step (see `step.make_train_step`), so it needs no wrapper
    here and the accumulated gradient is exact. `grad_clip <= 0` disables clipping."""
    chain = []
    if grad_clip > 0:
        chain.append(optax.clip_by_global_norm(grad_clip))
    chain.append(optax.adamw(make_schedule(lr, total_steps, warmup_ratio), b1=b1, b2=b2,
                             eps=eps, weight_decay=weight_decay))
    return optax.chain(*chain)
