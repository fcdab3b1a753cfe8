"""Text in, text out: encode questions with their images, sample with given parameters, decode.

Shared by RL (sampled rollouts, G per prompt) and evaluation (greedy). Prompt batches have a
fixed batch size and bucketed lengths, so the sampler compiles once per bucket. On several
processes each one samples its block of every global prompt batch (`make_sampler(..., mesh)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from skinr1_jax.data import pipeline
from skinr1_jax.model import image_processing, sampler

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

    def sft_lengths(self, items: Sequence[Mapping[str, Any]],
                    images: Mapping[str, Any]) -> np.ndarray:
        """len(self.sft(...)["input_ids"]) of each {example_id, prompt, response} item."""
        grids = {}
        for it in items:
            key = it["example_id"]
            if key not in grids:
                grids[key] = image_processing.model_grid(images[key], self.model_cfg,
                                                         self.min_pixels, self.max_pixels)
        return pipeline.sft_lengths(self.tokenizer, [(it["prompt"], it["response"]) for it in items],
                                    [grids[it["example_id"]] for it in items], self.model_cfg)


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


def vision_ids(model_cfg: Any) -> tuple[int, ...]:
    """Placeholder tokens a completion must never contain."""
    return (model_cfg.image_token_id, model_cfg.video_token_id, model_cfg.vision_start_token_id,
            model_cfg.vision_end_token_id)


def make_sampler(model_cfg: Any, tokenizer: Any, mesh: Any = None) -> sampler.Sampler:
    """The sampler RL and evaluation share: the tokenizer's EOS and pad ids, vision
    placeholders suppressed; on `mesh` when given (see `sampler.Sampler`)."""
    return sampler.Sampler(model_cfg, eos_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id,
                           mesh=mesh, suppress_ids=vision_ids(model_cfg))


def sample_batch(sample: sampler.Sampler, variables: Any, tokenizer: Any,
                 batch: Mapping[str, Any], *, num_samples: int, temperature: float,
                 max_new_tokens: int, rng: jax.Array, top_k: int = 0, top_p: float = 1.0
                 ) -> Rollout:
    """Completions of this process's prompt rows (its block of the global batch)."""
    out = sample(variables, batch, num_samples=num_samples, temperature=temperature, top_k=top_k,
                 top_p=top_p, max_new_tokens=max_new_tokens, rng=rng)
    texts = [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
             for row, n in zip(out.tokens, out.lengths)]
    return Rollout(dict(batch), out.tokens, out.logprobs, out.lengths, texts, num_samples)


def greedy_texts(sample: sampler.Sampler, variables: Any, tokenizer: Any,
                 encoded: Sequence[dict[str, Any]], *, batch_size: int, max_len: int,
                 max_new_tokens: int) -> list[str]:
    """Greedy completions of every encoded prompt, in order, on every process.

    Each fixed-size batch of `batch_size` prompts (the last one padded with masked rows) is
    split over the processes, each sampling its block; the completions (token ids, not
    parameters) are then gathered so every process holds all texts.
    """
    from jax.experimental import multihost_utils

    count, index = jax.process_count(), jax.process_index()
    if batch_size % count:
        raise ValueError(f"eval.batch_size={batch_size} is not divisible by the {count} processes")
    rows = batch_size // count
    texts: list[str] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        # One bucket for the whole global batch, so every process's block has the same shape.
        bucket = pipeline.bucket_length(max(len(e["input_ids"]) for e in chunk),
                                        prompt_buckets(max_len))
        mine = chunk[index * rows:(index + 1) * rows] or chunk[:1]   # filler rows are dropped
        batch = pipeline.collate_prompts(mine, (bucket,), tokenizer.pad_id, batch_size=rows)
        out = sample(variables, batch, num_samples=1, temperature=0.0,
                     max_new_tokens=max_new_tokens, rng=jax.random.key(0))
        tokens, lengths = out.tokens, out.lengths
        if count > 1:
            tokens = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
            lengths = np.asarray(multihost_utils.process_allgather(lengths, tiled=True))
        for i in range(len(chunk)):   # global row i of this batch: block i // rows, row i % rows
            n = lengths[i]
            texts.append(tokenizer.decode(tokens[i, :n].tolist(), skip_special_tokens=True))
    return texts


@dataclass(frozen=True)
class GRPOBatch:
    """The one definition of the RL batch layout: G completions of each prompt, rows
    prompt-major (row i * G + j is completion j of prompt i), every [rows, S] array in
    input-token coordinates over prompt + completion (S = P + T).

    Model inputs are what the policy (and the frozen reference) read; `completion_mask` marks
    the tokens the loss is on; `group_ids` are global prompt indices (process p's prompts
    follow the prompts of processes 0..p-1), so advantages normalise over the global groups
    whichever process sampled them; `old_logprobs` are the sampling policy's log-probs of the
    completion tokens at the sampling temperature (0 elsewhere), what a clipped update against
    the rollout policy (rl.mu > 1) compares with; `rewards` holds the reward inputs of
    `train.rewards.compute_rewards` (REWARD_KEYS, plus OPEN_KEYS for open-ended questions).
    `ref_logprobs` (beta != 0) are computed on device after placement and are not a field.
    """
    input_ids: np.ndarray          # i32[rows, S]
    attention_mask: np.ndarray     # i32[rows, S]
    position_ids: np.ndarray       # i32[3, rows, S]
    pixel_values: np.ndarray       # f32[rows * patches, D]
    completion_mask: np.ndarray    # i32[rows, S]
    target_positions: np.ndarray   # i32[rows, T]: the completion slots P..S-1, where the
                                   # step computes logits (train/step.py: rl_logprobs)
    group_ids: np.ndarray          # i32[rows]
    old_logprobs: np.ndarray       # f32[rows, S]
    rewards: dict[str, np.ndarray]  # i32 / f32 [rows] (option_scores f32[rows, MAX_OPTIONS])

    def arrays(self) -> dict[str, np.ndarray]:
        """The dict the train step takes (see train/step.py)."""
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "rewards"}
        return {**fields, **self.rewards}


def grpo_batch(prompts: Mapping[str, Any], tokens: np.ndarray, logprobs: np.ndarray,
               lengths: np.ndarray, parsed: Mapping[str, np.ndarray], *, num_generations: int,
               first_group: int, open_ended: bool) -> GRPOBatch:
    """The GRPO batch of a prompt batch (host arrays, B rows) and its B * G completions
    (tokens/logprobs [B * G, T], lengths incl. EOS, `parsed` reward fields of the texts).
    `first_group` is the global index of this process's first prompt."""
    from skinr1_jax.train.grpo import assign_group_ids

    g = num_generations
    b, p = prompts["input_ids"].shape
    t = tokens.shape[1]
    rep = lambda x: np.repeat(np.asarray(x), g, axis=0)
    input_ids = np.concatenate([rep(prompts["input_ids"]), tokens.astype(np.int32)], axis=1)
    steps = np.arange(t)[None, :]
    completion = (steps < lengths[:, None]).astype(np.int32)
    attention = np.concatenate([rep(prompts["attention_mask"]), completion], axis=1)
    # Decoding continues every row's positions from its largest prompt position, on all
    # three rotary axes (text tokens after the image), as the sampler does.
    prompt_pos = np.repeat(prompts["position_ids"], g, axis=1)            # [3, B*G, P]
    start = prompt_pos.max(axis=(0, 2)) + 1                               # [B*G]
    comp_pos = np.broadcast_to(start[:, None] + steps, (3, b * g, t))
    position_ids = np.concatenate([prompt_pos, comp_pos], axis=2).astype(np.int32)
    no_prompt = np.zeros((b * g, p), np.int32)
    pixels = prompts["pixel_values"]
    per_image = pixels.shape[0] // b
    pixels = np.repeat(pixels.reshape(b, per_image, -1), g, axis=0).reshape(b * g * per_image, -1)
    rewards = {"format_ok": parsed["format_ok"], "option": parsed["option"],
               "malignancy_pred": parsed["malignancy_pred"],
               "option_scores": rep(prompts["option_scores"]).astype(np.float32),
               "malignancy_true": rep(prompts["malignancy_true"]).astype(np.int32)}
    if "check_score" in parsed:
        rewards["check_score"] = np.asarray(parsed["check_score"], np.float32)
    if open_ended:
        rewards.update(node_pred=parsed["node_pred"],
                       node_true=rep(prompts["node_true"]).astype(np.int32),
                       is_open=rep(prompts["is_open"]).astype(np.int32))
    return GRPOBatch(
        input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
        pixel_values=pixels.astype(np.float32),
        completion_mask=np.concatenate([no_prompt, completion], axis=1),
        target_positions=np.broadcast_to(p + steps, (b * g, t)).astype(np.int32),
        group_ids=assign_group_ids(b, g) + np.int32(first_group),
        old_logprobs=np.concatenate([no_prompt.astype(np.float32),
                                     np.where(completion > 0, logprobs, 0).astype(np.float32)],
                                    axis=1),
        rewards=rewards)
