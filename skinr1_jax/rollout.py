"""Text in, text out: encode questions with their images, sample with given parameters, decode.

Shared by RL (sampled rollouts, G per prompt) and evaluation (greedy). Prompt batches have a
fixed batch size and bucketed lengths, so the sampler compiles once per bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np

from skinr1_jax.data import pipeline
from skinr1_jax.model import sampler

PROMPT_BUCKETS = (128, 192, 256, 320, 448, 640, 1024)


@dataclass(frozen=True)
class Encoder:
    """Question -> model inputs, with images preprocessed once per example."""
    tokenizer: Any
    model_cfg: Any
    min_pixels: int
    max_pixels: int
    cache: pipeline.ImageCache

    def question(self, question: Any, image: np.ndarray) -> dict[str, Any]:
        return pipeline.encode_question(self.tokenizer, question, image, self.model_cfg,
                                        min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                                        image_cache=self.cache)

    def sft(self, prompt: str, response: str, image: np.ndarray, example_id: str) -> dict[str, Any]:
        return pipeline.encode_sft(self.tokenizer, prompt, response, image, self.model_cfg,
                                   min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                                   example_id=example_id, image_cache=self.cache)


@dataclass
class Rollout:
    """A prompt batch (host arrays) and its completions, rows ordered prompt-major:
    row i * n + j is sample j of prompt i."""
    batch: dict[str, Any]
    tokens: np.ndarray          # i32[B * n, T]
    logprobs: np.ndarray        # f32[B * n, T], at the sampling temperature
    lengths: np.ndarray         # i32[B * n], EOS included
    texts: list[str]
    num_samples: int


def prompt_buckets(max_len: int) -> tuple[int, ...]:
    return tuple(b for b in PROMPT_BUCKETS if b < max_len) + (max_len,)


def batches(encoded: Sequence[dict[str, Any]], batch_size: int, pad_id: int,
            max_len: int) -> Iterator[dict[str, Any]]:
    """Fixed-size left-padded prompt batches (the last one padded with masked rows)."""
    for start in range(0, len(encoded), batch_size):
        yield pipeline.collate_prompts(encoded[start:start + batch_size], prompt_buckets(max_len),
                                       pad_id, batch_size=batch_size)


def vision_ids(model_cfg: Any) -> tuple[int, ...]:
    """Placeholder tokens a completion must never contain."""
    return (model_cfg.image_token_id, model_cfg.video_token_id, model_cfg.vision_start_token_id,
            model_cfg.vision_end_token_id)


def sample_batch(model_cfg: Any, variables: Any, tokenizer: Any, batch: Mapping[str, Any], *,
                 num_samples: int, temperature: float, max_new_tokens: int, rng: jax.Array,
                 top_k: int = 0, top_p: float = 1.0) -> Rollout:
    out = sampler.sample(model_cfg, variables, batch, num_samples=num_samples,
                         temperature=temperature, top_k=top_k, top_p=top_p,
                         max_new_tokens=max_new_tokens, eos_ids=tokenizer.eos_ids, rng=rng,
                         pad_id=tokenizer.pad_id, suppress_ids=vision_ids(model_cfg))
    texts = [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
             for row, n in zip(out.tokens, out.lengths)]
    return Rollout(dict(batch), out.tokens, out.logprobs, out.lengths, texts, num_samples)


def greedy_texts(model_cfg: Any, variables: Any, tokenizer: Any, encoded: Sequence[dict[str, Any]],
                 *, batch_size: int, max_len: int, max_new_tokens: int) -> list[str]:
    """Greedy completions of every encoded prompt, in order."""
    texts: list[str] = []
    for batch in batches(encoded, batch_size, tokenizer.pad_id, max_len):
        rollout = sample_batch(model_cfg, variables, tokenizer, batch, num_samples=1,
                               temperature=0.0, max_new_tokens=max_new_tokens,
                               rng=jax.random.key(0))
        texts.extend(t for t, keep in zip(rollout.texts, batch["example_mask"]) if keep)
    return texts
