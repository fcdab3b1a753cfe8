"""Rollouts on the mesh (8 fake CPU devices): the sampler run with parameters sharded in place
and prompts sharded over the batch axes gives the unsharded sampler's completions, reads back
only the completions, and the GRPO batch layout (`rollout.GRPOBatch`) is what the step reads."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from skinr1_jax.model import abstract_variables, get_rope_index
from skinr1_jax.rollout import grpo_batch, make_sampler
from skinr1_jax.train import sharding as shd

GRID = (1, 4, 4)


@pytest.fixture(scope="module")
def tok(sampler_tokenizer):
    return sampler_tokenizer


@pytest.fixture(scope="module")
def model(sampler_model):
    return sampler_model


def _prompts(cfg, tok, n: int) -> dict:
    """n left-padded prompts of different lengths, one image each (same grid)."""
    m2 = cfg.vision.spatial_merge_size ** 2
    words = "the lesion is a scaly red plaque on the elbow".split()
    rows = [[tok.vision_start_id] + [tok.image_pad_id] * (GRID[1] * GRID[2] // m2)
            + [tok.vision_end_id] + tok.encode(" ".join(words[: 2 + i % 7])) for i in range(n)]
    s = max(len(r) for r in rows)
    ids = np.full((n, s), tok.pad_id, np.int32)
    mask = np.zeros((n, s), np.int32)
    for i, r in enumerate(rows):
        ids[i, s - len(r):], mask[i, s - len(r):] = r, 1
    grid = (GRID,) * n
    pos, _ = get_rope_index(cfg, ids, mask, grid)
    pixels = np.random.default_rng(0).standard_normal(
        (n * GRID[1] * GRID[2], cfg.vision.patch_dim)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": np.asarray(pos, np.int32),
            "pixel_values": pixels, "grid_thw": np.asarray(grid)}


@pytest.mark.parametrize("mesh_shape,prompts", [((1, 8, 1), 8), ((2, 2, 2), 4), ((1, 8, 1), 2)])
def test_mesh_sampler_equals_unsharded(model, tok, mesh_shape, prompts):
    """fsdp-sharded parameters used in place, prompts sharded (or replicated when 2 prompts do
    not split over 8 devices), sharded KV cache: same tokens and log-probs as one device."""
    cfg, variables = model
    mesh = shd.make_mesh(dict(zip(("data", "fsdp", "tensor"), mesh_shape)))
    placed = shd.place_variables(variables, abstract_variables(cfg), mesh)
    # parameters stay sharded (fsdp/tensor split the large ones)
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(placed))
    batch = _prompts(cfg, tok, prompts)
    kwargs = dict(num_samples=2, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=6,
                  rng=jax.random.key(3))
    on_mesh = make_sampler(cfg, tok, mesh)
    got = on_mesh(placed, batch, **kwargs)
    want = make_sampler(cfg, tok)(variables, batch, **kwargs)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=1e-4, atol=1e-5)
    # Only the completions came back: no parameter bytes.
    assert on_mesh.host_bytes == got.tokens.nbytes + got.logprobs.nbytes + got.lengths.nbytes


def test_shard_batch_round_trip_and_global_shapes():
    mesh = shd.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    batch = {"input_ids": np.arange(16 * 3, dtype=np.int32).reshape(16, 3),
             "position_ids": np.zeros((3, 16, 3), np.int32), "small": np.arange(2)}
    shapes = shd.global_shapes(batch)
    assert shapes["input_ids"].shape == (16, 3) and shapes["position_ids"].shape == (3, 16, 3)
    placed = shd.shard_batch(batch, mesh)
    assert placed["input_ids"].sharding.spec == shd.batch_sharding(mesh, 2).spec
    assert placed["small"].sharding.is_fully_replicated        # 2 rows do not split over 8
    np.testing.assert_array_equal(shd.local_rows(placed["input_ids"]), batch["input_ids"])
    np.testing.assert_array_equal(shd.local_rows(placed["position_ids"], 1), batch["position_ids"])
    again = shd.shard_batch({"input_ids": placed["input_ids"]}, mesh)   # jax Arrays pass through
    assert again["input_ids"].sharding == placed["input_ids"].sharding


def test_grpo_batch_layout(model, tok):
    cfg, _ = model
    prompts = _prompts(cfg, tok, 2)
    prompts.update(option_scores=np.ones((2, 4), np.float32), malignancy_true=np.zeros(2, np.int32))
    g, t = 3, 4
    tokens = np.arange(2 * g * t, dtype=np.int32).reshape(2 * g, t)
    logprobs = -np.ones((2 * g, t), np.float32)
    lengths = np.array([1, 2, 3, 4, 4, 1], np.int32)
    parsed = {k: np.zeros(2 * g, np.int32) for k in ("format_ok", "option", "malignancy_pred")}
    b = grpo_batch(prompts, tokens, logprobs, lengths, parsed, num_generations=g,
                   first_group=5, open_ended=False)
    p = prompts["input_ids"].shape[1]
    np.testing.assert_array_equal(b.group_ids, [5, 5, 5, 6, 6, 6])    # global prompt indices
    np.testing.assert_array_equal(b.completion_mask[:, p:].sum(1), lengths)
    assert not b.completion_mask[:, :p].any()
    # old_logprobs: the sampled log-probs on the completion tokens, 0 elsewhere.
    np.testing.assert_array_equal(b.old_logprobs, -b.completion_mask.astype(np.float32))
    np.testing.assert_array_equal(b.input_ids[:, p:], tokens)
    # Logits are computed at the completion slots only: every row's P..P+T-1.
    np.testing.assert_array_equal(b.target_positions, np.tile(np.arange(p, p + t), (2 * g, 1)))
    arrays = b.arrays()
    assert {"input_ids", "completion_mask", "group_ids", "old_logprobs", "format_ok",
            "option_scores"} <= set(arrays)
    assert arrays["pixel_values"].shape[0] == 2 * g * GRID[1] * GRID[2]
