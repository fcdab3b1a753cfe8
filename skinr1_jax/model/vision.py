"""The Qwen2.5-VL vision tower: patch embedding, windowed / full attention blocks with 2-D
rotary embeddings, and the patch merger. Window order and attention segments are computed in
numpy from the static `grid_thw`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from skinr1_jax.model.config import ModelConfig
from skinr1_jax.model.layers import GatedMLP, Linear, RMSNorm, attention
from skinr1_jax.model.matmul import mixed_einsum
from skinr1_jax.model.rope import (GridTHW, apply_rotary, segment_ids, vision_cos_sin,
                                   vision_cu_seqlens, vision_position_ids, vision_window_index)

VISION_NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentBlocks:
    """Static layout of block-diagonal attention over contiguous segments: token n of segment i
    sits in row i, column n - start_i of a [num, length] grid (length = the longest segment).
    Attending block by block costs num * length^2 instead of N^2 (the dense block-diagonal
    mask spends almost all its work on masked pairs), and equal segments need no mask."""

    num: int
    length: int
    gather: np.ndarray | None   # int[num * length]: the token in each cell (padding: 0); None = identity
    valid: np.ndarray | None    # bool[num, length]: cells holding a token; None = all
    scatter: np.ndarray | None  # int[N]: the cell of each token; None = identity


def segment_blocks(cu_seqlens: np.ndarray) -> SegmentBlocks:
    """The `SegmentBlocks` of segments [cu[i], cu[i+1])."""
    cu = np.asarray(cu_seqlens, np.int64)
    starts, lens = cu[:-1], np.diff(cu)
    num, length = len(lens), int(lens.max())
    if (lens == length).all():
        return SegmentBlocks(num, length, None, None, None)
    col = np.arange(length)
    valid = col[None, :] < lens[:, None]
    gather = np.where(valid, starts[:, None] + col[None, :], 0).reshape(-1)
    seg = segment_ids(cu)
    scatter = seg * length + np.arange(int(cu[-1])) - starts[seg]
    return SegmentBlocks(num, length, gather, valid, scatter)


def block_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, blocks: SegmentBlocks,
                    scale: float, matmul_dtype: str | None = None) -> jnp.ndarray:
    """Attention of q, k, v [N, H, D] within each segment of `blocks` -> [N, H, D]."""
    def grid(x: jnp.ndarray) -> jnp.ndarray:
        if blocks.gather is not None:
            x = x[blocks.gather]
        return x.reshape(blocks.num, blocks.length, *x.shape[1:])

    mask = None if blocks.valid is None else jnp.asarray(blocks.valid)[:, None, :]
    heads_major = lambda x: grid(x).transpose(0, 2, 1, 3)
    out = attention(grid(q), heads_major(k), heads_major(v), mask, scale,
                    matmul_dtype=matmul_dtype)
    out = out.reshape(blocks.num * blocks.length, *out.shape[2:])
    return out if blocks.scatter is None else out[blocks.scatter]


def _linear_kw(cfg: ModelConfig, deterministic: bool) -> dict:
    return dict(lora=cfg.lora, deterministic=deterministic, dtype=cfg.dtype,
                param_dtype=cfg.param_dtype, matmul_dtype=cfg.matmul_dtype)


def _norm(cfg: ModelConfig, name: str) -> RMSNorm:
    return RMSNorm(VISION_NORM_EPS, "vision_embed", cfg.dtype, cfg.param_dtype, name=name)


class VisionAttention(nn.Module):
    cfg: ModelConfig
    prefix: str
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray,
                 mask: jnp.ndarray | SegmentBlocks) -> jnp.ndarray:
        v = self.cfg.vision
        kw = _linear_kw(self.cfg, self.deterministic)
        n = x.shape[0]
        qkv = Linear(3 * v.hidden_size, ("vision_embed", "vision_qkv"), f"{self.prefix}.qkv",
                     name="qkv", **kw)(x)
        q, k, val = jnp.moveaxis(qkv.reshape(n, 3, v.num_heads, v.head_dim), 1, 0)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if isinstance(mask, SegmentBlocks):
            out = block_attention(q, k, val, mask, v.head_dim ** -0.5, self.cfg.matmul_dtype)
        else:
            out = attention(q[None], k.transpose(1, 0, 2)[None], val.transpose(1, 0, 2)[None],
                            mask[None], v.head_dim ** -0.5, matmul_dtype=self.cfg.matmul_dtype)[0]
        return Linear(v.hidden_size, ("vision_heads", "vision_embed"), f"{self.prefix}.proj",
                      name="proj", **kw)(out.reshape(n, v.hidden_size))


class VisionBlock(nn.Module):
    cfg: ModelConfig
    index: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray,
                 mask: jnp.ndarray | SegmentBlocks) -> jnp.ndarray:
        """x [N, D]; cos/sin f32[N, head_dim]; mask bool[N, N] (block-diagonal segments) or
        the segments' `SegmentBlocks`."""
        v = self.cfg.vision
        prefix = f"model.visual.blocks.{self.index}"
        x = x + VisionAttention(self.cfg, f"{prefix}.attn", self.deterministic, name="attn")(
            _norm(self.cfg, "norm1")(x), cos, sin, mask)
        mlp = GatedMLP(v.hidden_size, v.intermediate_size, ("vision_embed", "vision_mlp"),
                       f"{prefix}.mlp", True, name="mlp", **_linear_kw(self.cfg, self.deterministic))
        return x + mlp(_norm(self.cfg, "norm2")(x))


class PatchMerger(nn.Module):
    """RMSNorm, group merge x merge neighbouring patches, Linear-GELU-Linear to the LM width."""

    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        v = self.cfg.vision
        kw = _linear_kw(self.cfg, self.deterministic)
        merged = v.hidden_size * v.spatial_merge_size ** 2
        x = _norm(self.cfg, "ln_q")(x).reshape(-1, merged)
        x = Linear(merged, ("vision_merge_in", "vision_merge"), "model.visual.merger.mlp.0",
                   name="mlp_0", **kw)(x)
        x = nn.gelu(x, approximate=False)
        return Linear(v.out_hidden_size, ("vision_merge", "embed"), "model.visual.merger.mlp.2",
                      name="mlp_2", **kw)(x)


class VisionTower(nn.Module):
    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, pixel_values: jnp.ndarray, grid_thw: GridTHW) -> jnp.ndarray:
        """pixel_values [N, C*Tp*P*P] in the HF processor's patch order -> image features
        [N / merge^2, out_hidden_size] in the same (merged) order."""
        v, c = self.cfg.vision, self.cfg
        grid_thw = tuple(tuple(int(d) for d in g) for g in grid_thw)
        n = sum(t * h * w for t, h, w in grid_thw)
        if pixel_values.shape != (n, v.patch_dim):
            raise ValueError(f"pixel_values shape {pixel_values.shape} does not match grid_thw "
                             f"{grid_thw}: expected {(n, v.patch_dim)}")
        unit = v.spatial_merge_size ** 2
        kernel = self.param("patch_embed", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vision_patch", "vision_embed")),
            (v.patch_dim, v.hidden_size), jnp.dtype(c.param_dtype))
        x = mixed_einsum("np,pd->nd", pixel_values, kernel, c.product_dtype).astype(c.dtype)

        window_index, cu_window = vision_window_index(grid_thw, v.spatial_merge_size,
                                                      v.window_size, v.patch_size)
        # Reorder merge groups so every window is contiguous; the patch order inside a group stays.
        patch_order = (window_index[:, None] * unit + np.arange(unit)).reshape(-1)
        x = x[patch_order]
        cos, sin = vision_cos_sin(vision_position_ids(grid_thw, v.spatial_merge_size)[patch_order],
                                  v.head_dim)
        full_blocks = segment_blocks(vision_cu_seqlens(grid_thw))
        window_blocks = segment_blocks(cu_window)
        for i in range(v.depth):
            mask = full_blocks if i in v.fullatt_block_indexes else window_blocks
            # The layout is numpy, so static under remat (argument 4, counting the module).
            block = nn.remat(VisionBlock, static_argnums=(4,)) if c.remat else VisionBlock
            x = block(c, i, self.deterministic, name=f"blocks_{i}")(x, cos, sin, mask)
        merged = PatchMerger(c, self.deterministic, name="merger")(x)
        return merged[np.argsort(window_index)]
