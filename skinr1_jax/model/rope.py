"""Rotary embeddings (transformers' rotate-half layout, no weight permutation) and the host-side
index helpers of Qwen2.5-VL: vision patch positions, window order, attention segments, and
`get_rope_index` (the 3-D multimodal positions of the language model).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from skinr1_jax.model.config import VISION_ROPE_THETA, ModelConfig

GridTHW = tuple[tuple[int, int, int], ...]


def rotate_half(x: jnp.ndarray) -> jnp.ndarray:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """x [..., heads, head_dim]; cos/sin [..., head_dim] broadcast over heads. Computed in fp32."""
    x32 = x.astype(jnp.float32)
    out = x32 * cos[..., None, :] + rotate_half(x32) * sin[..., None, :]
    return out.astype(x.dtype)


def mrope_cos_sin(position_ids: jnp.ndarray, head_dim: int, theta: float,
                  mrope_section: Sequence[int]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Multimodal rotary tables. position_ids i32[3, B, S] (temporal, height, width) ->
    cos, sin f32[B, S, head_dim]: frequency chunk i of `mrope_section` takes axis i % 3."""
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    bounds = np.cumsum([0, *mrope_section])
    pos = position_ids.astype(jnp.float32)
    angles = jnp.concatenate([pos[i % 3][..., None] * jnp.asarray(inv_freq[lo:hi])
                              for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))],
                             axis=-1)                                  # [B, S, head_dim / 2]
    # cos / sin once per distinct frequency, copied to both halves by an exact one-hot
    # product. The product is what matters: XLA:CPU fuses elementwise producers into every
    # consumer (an optimization_barrier is removed before fusion), so tables built
    # elementwise were recomputed per head in each rotary use, forward and backward (74 trig
    # loops; 0.9 ms of the tiny SFT step's 50 ms on one core). A dot's result is materialized,
    # and a 2-D one is token-major, the layout every rotary use reads.
    dup = jnp.asarray(np.concatenate([np.eye(half, dtype=np.float32)] * 2, axis=1))
    def table(f):
        return jnp.dot(f(angles).reshape(-1, half), dup, precision=jax.lax.Precision.HIGHEST
                       ).reshape(*angles.shape[:-1], head_dim)
    return table(jnp.cos), table(jnp.sin)


def vision_cos_sin(pos_hw: np.ndarray, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """2-D axial rotary tables for vision patches. pos_hw int[N, 2] (row, col) ->
    cos, sin f32[N, head_dim] laid out as [h-freqs, w-freqs, h-freqs, w-freqs]. Numpy: the
    positions are static, so the tables are compile-time constants (no cos / sin at run time)."""
    spatial_dim = head_dim // 2
    inv_freq = 1.0 / (VISION_ROPE_THETA ** (np.arange(0, spatial_dim, 2, dtype=np.float32)
                                            / spatial_dim))
    freqs = np.asarray(pos_hw, np.float32)[..., None] * inv_freq  # [N, 2, D/4]
    freq_hw = np.concatenate([freqs[:, 0], freqs[:, 1]], axis=-1)
    emb = np.concatenate([freq_hw, freq_hw], axis=-1)
    return np.cos(emb), np.sin(emb)


def vision_position_ids(grid_thw: GridTHW, merge: int) -> np.ndarray:
    """int[N, 2] (row, col) of each patch, in the processor's merge-block-major patch order."""
    out = []
    for t, h, w in grid_thw:
        hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        hpos = hpos.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        wpos = wpos.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([hpos, wpos], axis=-1), (t, 1)))
    return np.concatenate(out, axis=0)


def vision_window_index(grid_thw: GridTHW, merge: int, window_size: int,
                        patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(window_index int[N / merge^2], cu_window_seqlens int[W+1]): the order of merged tokens
    that makes each attention window contiguous, and the window boundaries in patches."""
    window_index, cu = [], [0]
    offset = 0
    win = window_size // merge // patch_size
    unit = merge * merge
    for t, h, w in grid_thw:
        gh, gw = h // merge, w // merge
        index = np.arange(t * gh * gw).reshape(t, gh, gw)
        pad_h, pad_w = win - gh % win, win - gw % win
        nh, nw = (gh + pad_h) // win, (gw + pad_w) // win
        padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
        padded = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4)
        padded = padded.reshape(t, nh * nw, win, win)
        seqlens = (padded != -100).sum(axis=(2, 3)).reshape(-1)
        flat = padded.reshape(-1)
        window_index.append(flat[flat != -100] + offset)
        cu.extend((np.cumsum(seqlens) * unit + cu[-1]).tolist())
        offset += t * gh * gw
    cu_arr = np.asarray(cu, np.int64)
    keep = np.concatenate([[True], cu_arr[1:] != cu_arr[:-1]])  # torch.unique_consecutive
    return np.concatenate(window_index), cu_arr[keep]


def vision_cu_seqlens(grid_thw: GridTHW) -> np.ndarray:
    """Per-frame attention boundaries (each frame of each image attends to itself)."""
    lens = np.concatenate([np.full(t, h * w) for t, h, w in grid_thw])
    return np.concatenate([[0], np.cumsum(lens)])


def segment_ids(cu_seqlens: np.ndarray) -> np.ndarray:
    """int[N]: which segment [cu[i], cu[i+1]) each position belongs to."""
    n = int(cu_seqlens[-1])
    return np.searchsorted(cu_seqlens[1:], np.arange(n), side="right")


def get_rope_index(cfg: ModelConfig, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                   grid_thw: GridTHW | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Numpy port of transformers' Qwen2.5-VL `get_rope_index` (images only).

    input_ids int[B, S]; attention_mask int[B, S] (1 = real token, left padding allowed);
    grid_thw: (t, h, w) per image, in order of appearance across the batch.
    Returns position_ids int32[3, B, S] (0 at padding) and rope_deltas int32[B] such that a
    token written at cache slot p after the prompt has position p + rope_deltas[b] on all three
    axes. Without padding rope_deltas equals transformers' mrope deltas; with left padding it is
    that minus the row's padding count (transformers counts real tokens, we count slots), so
    decoding gives the same positions as `generate`.
    """
    input_ids = np.asarray(input_ids)
    b, s = input_ids.shape
    mask = np.ones((b, s), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    merge = cfg.vision.spatial_merge_size
    grids = iter(grid_thw or ())
    position_ids = np.zeros((3, b, s), np.int64)
    deltas = np.zeros((b,), np.int64)
    for i in range(b):
        ids = input_ids[i][mask[i]]
        is_image = (ids == cfg.image_token_id)
        chunks, pos = [], 0
        for image, group in itertools.groupby(is_image.tolist()):
            n = len(list(group))
            if not image:
                chunks.append(np.broadcast_to(np.arange(n) + pos, (3, n)))
                pos += n
                continue
            try:
                t, h, w = next(grids)
            except StopIteration:
                raise ValueError(f"row {i}: more image-token runs than grid_thw entries "
                                 f"({len(grid_thw or ())})") from None
            gt, gh, gw = t, h // merge, w // merge
            if gt * gh * gw != n:
                raise ValueError(f"row {i}: image run of {n} tokens but grid {(t, h, w)} needs "
                                 f"{gt * gh * gw}")
            tt, hh, ww = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
            chunks.append(np.stack([tt, hh, ww]).reshape(3, -1) + pos)
            pos += max(gh, gw)
        llm = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), np.int64)
        position_ids[:, i, mask[i]] = llm
        real = np.flatnonzero(mask[i])
        deltas[i] = (llm.max() + 1 - (real[-1] + 1)) if len(real) else 0
    leftover = sum(1 for _ in grids)
    if leftover:
        raise ValueError(f"{leftover} grid_thw entries left over: fewer image-token runs than images")
    return position_ids.astype(np.int32), deltas.astype(np.int32)
