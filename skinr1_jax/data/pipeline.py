"""From examples to fixed-shape host batches: chat encoding, SFT loss masks, padding, and a
resumable, sharded, deterministic iterator.

Shapes never depend on the data: every batch has `batch_size` rows (short batches are filled
with copies of a real row whose `example_mask` is 0 and whose loss mask is all 0) and a
sequence length from a small fixed set of buckets, so a jitted step compiles once per bucket.
Filler rows keep their attention mask and image, so attention never sees an all-masked row and
the image count (hence `pixel_values`' shape and the static `grid_thw`) stays fixed.

Alignment (shared with `train.losses`): masks are in input-token coordinates. `loss_mask[t]`
is 1 exactly when `input_ids[t]` is a token of the assistant response (its closing
`<|im_end|>` included), i.e. a token the logits at t - 1 must predict. `targets[t] =
input_ids[t + 1]` is provided for consumers that prefer shifted labels.

Batches are host dicts; `split_host(batch)` separates the arrays a jitted step takes from the
host-side fields (static `grid_thw`, example ids, counters, shifted targets).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from skinr1_jax.data.prompts import MAX_OPTIONS
from skinr1_jax.data.tasks import Question
from skinr1_jax.knowledge.vocab import MALIGNANCY_CLASSES
from skinr1_jax.model import image_processing
from skinr1_jax.model.config import ModelConfig
from skinr1_jax.model.rope import get_rope_index

log = logging.getLogger(__name__)

_CORE_KEYS = ("input_ids", "position_ids", "pixel_values", "grid_thw", "loss_mask", "targets",
              "prompt_len", "example_id")
HOST_KEYS = frozenset({"grid_thw", "example_ids", "num_truncated", "num_dropped", "targets"})


def _rope_index(cfg: ModelConfig, input_ids: np.ndarray, grid_thw: tuple[int, int, int]) -> np.ndarray:
    """3-D rotary positions of one unpadded sequence: int32[3, L]."""
    ids = input_ids[None, :]
    pos, _ = get_rope_index(cfg, ids, np.ones_like(ids), (tuple(int(g) for g in grid_thw),))
    return np.asarray(pos, np.int32)[:, 0, :]


class ImageCache:
    """Preprocessed images keyed by example id (LRU), so the same image asked in several tasks or
    epochs is resized and patchified once."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._store: collections.OrderedDict[str, tuple[np.ndarray, tuple[int, int, int]]] = \
            collections.OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: str, image: np.ndarray, model_cfg: ModelConfig, *, min_pixels: int,
            max_pixels: int) -> tuple[np.ndarray, tuple[int, int, int]]:
        full_key = f"{key}\x1f{min_pixels}\x1f{max_pixels}"
        if full_key in self._store:
            self.hits += 1
            self._store.move_to_end(full_key)
            return self._store[full_key]
        self.misses += 1
        pixel_values, grid = image_processing.preprocess_for_model(
            image, model_cfg, min_pixels=min_pixels, max_pixels=max_pixels)
        out = (pixel_values, tuple(int(g) for g in grid))
        if self.max_entries > 0:
            self._store[full_key] = out
            if len(self._store) > self.max_entries:
                self._store.popitem(last=False)
        return out


def _user_turn(tokenizer: Any, text: str, system: str | None) -> str:
    """The chat text every row starts with: (system,) the user turn (image first, then `text`)
    and the generation prompt, its image a single placeholder."""
    messages: list[dict[str, Any]] = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
    return tokenizer.chat(messages, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, text: str, image: np.ndarray, model_cfg: ModelConfig, *,
                  min_pixels: int, max_pixels: int, system: str | None = None,
                  example_id: str = "", image_cache: ImageCache | None = None) -> dict[str, Any]:
    """A chat-formatted user turn (image first, then `text`) ending in the generation prompt.

    Returns input_ids int32[L] with the image placeholder expanded to one image-pad token per
    merged patch, position_ids int32[3, L], pixel_values float32[N, D], grid_thw (t, h, w).
    With `image_cache`, the image is preprocessed once per example id.
    """
    if image_cache is not None and example_id:
        pixel_values, grid_thw = image_cache.get(example_id, image, model_cfg, min_pixels=min_pixels,
                                                 max_pixels=max_pixels)
    else:
        pixel_values, grid_thw = image_processing.preprocess_for_model(
            image, model_cfg, min_pixels=min_pixels, max_pixels=max_pixels)
    n_image = image_processing.num_image_tokens(grid_thw, model_cfg.vision.spatial_merge_size)
    ids = list(tokenizer.encode(_user_turn(tokenizer, text, system)))
    pad = tokenizer.image_pad_id
    if ids.count(pad) != 1:
        raise ValueError(f"example {example_id!r}: the chat template produced {ids.count(pad)} image "
                         f"placeholders (token {pad}); expected exactly 1")
    at = ids.index(pad)
    input_ids = np.asarray(ids[:at] + [pad] * n_image + ids[at + 1:], np.int32)
    return {
        "input_ids": input_ids,
        "position_ids": _rope_index(model_cfg, input_ids, grid_thw),
        "pixel_values": pixel_values,
        "grid_thw": tuple(int(g) for g in grid_thw),
        "prompt_len": len(input_ids),
        "example_id": example_id,
    }


def encode_sft(tokenizer: Any, prompt_text: str, response_text: str, image: np.ndarray,
               model_cfg: ModelConfig, *, min_pixels: int, max_pixels: int,
               system: str | None = None, example_id: str = "",
               image_cache: ImageCache | None = None) -> dict[str, Any]:
    """encode_prompt plus the assistant response and its end-of-turn token.

    The response is tokenized on its own, after the generation prompt, exactly as the model
    will see its own samples. Adds loss_mask int32[L] and targets int32[L] (module docstring).
    """
    enc = encode_prompt(tokenizer, prompt_text, image, model_cfg, min_pixels=min_pixels,
                        max_pixels=max_pixels, system=system, example_id=example_id,
                        image_cache=image_cache)
    response = list(tokenizer.encode(response_text)) + [tokenizer.eos_id]
    prompt_len = enc["prompt_len"]
    input_ids = np.concatenate([enc["input_ids"], np.asarray(response, np.int32)])
    targets = np.append(input_ids[1:], np.int32(tokenizer.pad_id)).astype(np.int32)
    loss_mask = np.zeros(len(input_ids), np.int32)
    loss_mask[prompt_len:] = 1
    enc.update(input_ids=input_ids, targets=targets, loss_mask=loss_mask,
               position_ids=_rope_index(model_cfg, input_ids, enc["grid_thw"]))
    return enc


def sft_lengths(tokenizer: Any, texts: Sequence[tuple[str, str]],
                grids: Sequence[tuple[int, int, int]], model_cfg: ModelConfig, *,
                system: str | None = None) -> np.ndarray:
    """len(encode_sft(...)["input_ids"]) of each (prompt, response) whose image has grid_thw
    `grids[i]`: two batched tokenizer calls, no rotary indices or pixels (what grouping rows
    by length needs, for every item, before training starts)."""
    if len(texts) != len(grids):
        raise ValueError(f"{len(texts)} texts for {len(grids)} image grids")
    prompts = tokenizer.encode_batch([_user_turn(tokenizer, p, system) for p, _ in texts])
    responses = tokenizer.encode_batch([r for _, r in texts])
    merge = model_cfg.vision.spatial_merge_size
    # The one image placeholder becomes the image's tokens; the response ends with EOS.
    return np.asarray([len(p) - 1 + image_processing.num_image_tokens(g, merge) + len(r) + 1
                       for p, r, g in zip(prompts, responses, grids)], np.int64)


def encode_question(tokenizer: Any, question: Question, image: np.ndarray, model_cfg: ModelConfig, *,
                    min_pixels: int, max_pixels: int, system: str | None = None,
                    image_cache: ImageCache | None = None) -> dict[str, Any]:
    """encode_prompt for a task question, carrying what `train.rewards` needs under its names:
    option_scores float32[26] (zero beyond num_options), num_options, answer (-1 open-ended),
    malignancy_true (index in MALIGNANCY_CLASSES), node_true, is_open."""
    enc = encode_prompt(tokenizer, question.prompt, image, model_cfg, min_pixels=min_pixels,
                        max_pixels=max_pixels, system=system, example_id=question.example_id,
                        image_cache=image_cache)
    scores = np.zeros(MAX_OPTIONS, np.float32)
    scores[:len(question.scores)] = question.scores
    enc.update(option_scores=scores, num_options=np.int32(len(question.options)),
               answer=np.int32(question.answer),
               malignancy_true=np.int32(MALIGNANCY_CLASSES.index(question.malignancy)),
               node_true=np.int32(question.node), is_open=np.int32(question.kind == "open"))
    return enc


def split_host(batch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays for the jitted step, host-side fields: HOST_KEYS present in the batch)."""
    return ({k: v for k, v in batch.items() if k not in HOST_KEYS},
            {k: v for k, v in batch.items() if k in HOST_KEYS})


def bucket_length(length: int, buckets: int | Sequence[int]) -> int:
    """The smallest bucket >= length, else the largest bucket (the caller truncates)."""
    sizes = sorted({int(buckets)} if isinstance(buckets, (int, np.integer)) else {int(b) for b in buckets})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sequence-length buckets must be positive integers, got {buckets!r}")
    return next((s for s in sizes if s >= length), sizes[-1])


def target_positions(loss_mask: np.ndarray, max_targets: int) -> np.ndarray:
    """i32[B, K] positions t >= 1 of each row's target tokens (loss_mask 1), in order, padded
    with 0 (never a target), K = `max_targets`. With it the step projects onto the vocabulary
    only the hidden states that predict a target: the vocabulary matmul is the largest of a
    small model and the prompt half of an SFT row needs none of it."""
    mask = np.asarray(loss_mask).copy()
    mask[:, 0] = 0
    counts = mask.sum(axis=1)
    if counts.max(initial=0) > max_targets:
        row = int(counts.argmax())
        raise ValueError(f"row {row} has {int(counts[row])} target tokens, more than "
                         f"data.max_target_tokens={max_targets}; raise it (0 = every position)")
    out = np.zeros((mask.shape[0], max_targets), np.int32)
    for i, row in enumerate(mask):
        where = np.flatnonzero(row)
        out[i, :len(where)] = where
    return out


def _fill_rows(encoded: list[dict[str, Any]], batch_size: int | None) -> tuple[list[dict[str, Any]], np.ndarray]:
    size = len(encoded) if batch_size is None else batch_size
    if len(encoded) > size:
        raise ValueError(f"{len(encoded)} examples do not fit a batch of {size}")
    mask = np.zeros(size, np.int32)
    mask[:len(encoded)] = 1
    return encoded + [encoded[-1]] * (size - len(encoded)), mask


def _images(rows: list[dict[str, Any]]) -> tuple[np.ndarray, tuple[tuple[int, int, int], ...]]:
    return (np.concatenate([r["pixel_values"] for r in rows], axis=0),
            tuple(tuple(r["grid_thw"]) for r in rows))


def _extras(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"example_ids": [str(r.get("example_id", "")) for r in rows]}
    for key in rows[0]:
        if key not in _CORE_KEYS:
            out[key] = np.stack([np.asarray(r[key]) for r in rows])
    return out


def collate_sft(encoded_list: Sequence[dict[str, Any]], seq_len: int | Sequence[int], pad_id: int, *,
                batch_size: int | None = None, max_targets: int = 0,
                length: int | None = None) -> dict[str, Any]:
    """Right-padded SFT batch of fixed shape [batch_size, bucket]: the smallest of the `seq_len`
    buckets that holds the longest row, or `length` where given (the global batch's longest row
    when each process collates only its block).

    With `max_targets` > 0 it also holds target_positions i32[B, min(max_targets, bucket)]
    (`target_positions`), which makes the step compute logits at those positions only.

    Responses longer than the bucket are truncated (prompt and image kept); an example whose
    prompt leaves no room for a response token is dropped. Both are counted in
    `num_truncated` / `num_dropped` and logged. Keys: input_ids, attention_mask, position_ids [3, B, S], targets, loss_mask,
    example_mask [B], pixel_values, grid_thw (static tuple), num_truncated, num_dropped,
    example_ids.
    """
    if not encoded_list:
        raise ValueError("cannot collate an empty batch")
    s = bucket_length(max(len(e["input_ids"]) for e in encoded_list) if length is None else length,
                      seq_len)
    kept, truncated, dropped = [], 0, []
    for e in encoded_list:
        if e["prompt_len"] >= s:
            dropped.append(str(e.get("example_id", "")))
            continue
        truncated += int(len(e["input_ids"]) > s)
        kept.append(e)
    if truncated or dropped:
        log.warning("SFT batch at length %d: %d responses truncated, %d examples dropped "
                    "(prompt fills the sequence): %s", s, truncated, len(dropped), dropped)
    if not kept:
        raise ValueError(f"no example of the batch fits sequence length {s} "
                         f"(shortest prompt {min(e['prompt_len'] for e in encoded_list)} tokens)")
    rows, example_mask = _fill_rows(kept, len(encoded_list) if batch_size is None else batch_size)
    b = len(rows)
    input_ids = np.full((b, s), pad_id, np.int32)
    attention = np.zeros((b, s), np.int32)
    loss_mask = np.zeros((b, s), np.int32)
    positions = np.zeros((3, b, s), np.int32)
    for i, r in enumerate(rows):
        n = min(len(r["input_ids"]), s)
        input_ids[i, :n] = r["input_ids"][:n]
        attention[i, :n] = 1
        loss_mask[i, :n] = r["loss_mask"][:n] * example_mask[i]
        positions[:, i, :n] = r["position_ids"][:, :n]
    targets = np.concatenate([input_ids[:, 1:], np.full((b, 1), pad_id, np.int32)], axis=1)
    pixel_values, grid_thw = _images(rows)
    extra = {"target_positions": target_positions(loss_mask, min(max_targets, s))} if max_targets > 0 else {}
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions,
            "targets": targets, "loss_mask": loss_mask, "example_mask": example_mask, **extra,
            "pixel_values": pixel_values, "grid_thw": grid_thw,
            "num_truncated": np.int32(truncated), "num_dropped": np.int32(len(dropped)), **_extras(rows)}


def collate_prompts(encoded_list: Sequence[dict[str, Any]], seq_len: int | Sequence[int], pad_id: int, *,
                    batch_size: int | None = None) -> dict[str, Any]:
    """Left-padded prompt batch for sampling, fixed shape [batch_size, bucket].

    Keys: input_ids, attention_mask, position_ids [3, B, S], rope_deltas [B] (the offset that
    continues positions during decoding: max position + 1 - S), example_mask, pixel_values,
    grid_thw, example_ids, and every extra per-example key stacked (option_scores, answer, ...).
    A prompt longer than the largest bucket is an error: prompts are never truncated.
    """
    if not encoded_list:
        raise ValueError("cannot collate an empty batch")
    s = bucket_length(max(len(e["input_ids"]) for e in encoded_list), seq_len)
    for e in encoded_list:
        if len(e["input_ids"]) > s:
            raise ValueError(f"prompt of example {e.get('example_id')!r} has {len(e['input_ids'])} tokens, "
                             f"more than the longest sequence bucket {s}; raise data.max_seq_len")
    rows, example_mask = _fill_rows(list(encoded_list), batch_size)
    b = len(rows)
    input_ids = np.full((b, s), pad_id, np.int32)
    attention = np.zeros((b, s), np.int32)
    positions = np.zeros((3, b, s), np.int32)
    deltas = np.zeros(b, np.int32)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        input_ids[i, s - n:] = r["input_ids"]
        attention[i, s - n:] = 1
        positions[:, i, s - n:] = r["position_ids"]
        deltas[i] = int(r["position_ids"].max()) + 1 - s
    pixel_values, grid_thw = _images(rows)
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions,
            "rope_deltas": deltas, "example_mask": example_mask, "pixel_values": pixel_values,
            "grid_thw": grid_thw, **_extras(rows)}


class BatchIterator:
    """Deterministic, resumable, sharded batches over a fixed list of items.

    Each epoch permutes all items with a generator seeded by (seed, epoch); step k's global
    batch is the next `batch_size` items of that stream (running on across epoch boundaries,
    so every batch is full). Process `shard_index` of `shard_count` encodes and returns only
    its contiguous block of `batch_size // shard_count` rows of the global batch, so the
    blocks of all processes, in process order, are the global batch a single process reads.
    The state (epoch, position in the epoch's global order) is therefore the same on every
    process and for any process count: a checkpoint resumes under a different number of
    processes. With `num_epochs` set (single process only), iteration stops after that many
    epochs and the last batch may be short (collate_fn pads it). Encoded items are cached
    (LRU), so images are preprocessed once.

    With `lengths` (each item's encoded length) and `group_batches` > 0, each run of
    `group_batches` global batches of the epoch's order is sorted by length before it is cut
    into batches, whose order within the run is then shuffled: batches of similar lengths pad
    less. collate_fn is then also given `length=`, the longest item of the *global* batch, so
    that every process pads its block to the same bucket.
    """

    def __init__(self, items: Sequence[Any], batch_size: int, seed: int,
                 encode_fn: Callable[[Any], dict[str, Any]],
                 collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]], *,
                 shard_index: int = 0, shard_count: int = 1, shuffle: bool = True,
                 num_epochs: int | None = None, cache_size: int = 4096,
                 lengths: Sequence[int] | None = None, group_batches: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
        if batch_size % shard_count:
            raise ValueError(f"global batch {batch_size} is not divisible by the {shard_count} "
                             "processes")
        if num_epochs is not None and shard_count > 1:
            raise ValueError("num_epochs (a short last batch) needs shard_count=1: a short global "
                             "batch does not split evenly over processes")
        if not items:
            raise ValueError("BatchIterator needs at least one item")
        if lengths is not None and len(lengths) != len(items):
            raise ValueError(f"{len(lengths)} lengths for {len(items)} items")
        self._items = items
        self._lengths = None if lengths is None else np.asarray(lengths, np.int64)
        self.group_batches = int(group_batches)
        self.batch_size = batch_size
        self.rows = batch_size // shard_count      # this process's rows of every batch
        self.seed = int(seed)
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self._encode = encode_fn
        self._collate = collate_fn
        self._cache: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self._cache_size = cache_size
        self._order_epoch = -1
        self._order = np.zeros(0, np.int64)
        self.epoch = 0
        self.position = 0

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self._items) // self.batch_size)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            n = len(self._items)
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            if self._lengths is not None and self.group_batches > 0:
                order = self._grouped(order, rng)
            self._order, self._order_epoch = order, epoch
        return self._order

    def _grouped(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, window = self.batch_size, self.group_batches * self.batch_size
        runs = []
        for start in range(0, len(order), window):
            run = order[start:start + window]
            run = run[np.argsort(self._lengths[run], kind="stable")]
            full = len(run) // b
            batches = [run[i * b:(i + 1) * b] for i in rng.permutation(full)]
            runs += batches + [run[full * b:]]    # a short tail stays last: batches stay aligned
        return np.concatenate(runs)

    def _encoded(self, index: int) -> dict[str, Any]:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        enc = self._encode(self._items[index])
        if self._cache_size > 0:
            self._cache[index] = enc
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return enc

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        picked: list[int] = []
        while len(picked) < self.batch_size:
            if self.num_epochs is not None and self.epoch >= self.num_epochs:
                break
            order = self._epoch_order(self.epoch)
            take = order[self.position:self.position + self.batch_size - len(picked)]
            picked.extend(int(i) for i in take)
            self.position += len(take)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        if not picked:
            raise StopIteration
        mine = picked[self.shard_index * self.rows:(self.shard_index + 1) * self.rows]
        rows = [self._encoded(i) for i in mine]
        if self._lengths is None:
            return self._collate(rows)
        return self._collate(rows, length=int(self._lengths[picked].max()))

    def get_state(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def restore(self, state: Mapping[str, int]) -> None:
        """Resume so the next batch is the one that followed when `state` was taken (by any
        number of processes: the position is global)."""
        missing = {"epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"iterator state lacks {sorted(missing)}: {dict(state)}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < len(self._items):
            raise ValueError(f"iterator state {dict(state)} is out of range for "
                             f"{len(self._items)} items")
        self.epoch, self.position = epoch, position
