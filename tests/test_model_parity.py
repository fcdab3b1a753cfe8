"""Parity of the Flax Qwen2.5-VL with transformers (CPU torch, fp32, highest matmul precision):
rotary tables, window indices, one vision block, the merger, one decoder layer, 3-D positions,
then whole-model logits; plus the KV cache against the full forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import vision_utils  # noqa: E402
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf_mod  # noqa: E402

from skinr1_jax.model import forward, get_rope_index, init_cache  # noqa: E402
from skinr1_jax.model.convert import hf_logits, random_batch  # noqa: E402
from skinr1_jax.model.hf_io import load_hf  # noqa: E402
from skinr1_jax.model.layers import CAUSAL_BLOCK_MAX, attention, causal_block  # noqa: E402
from skinr1_jax.model.rope import (apply_rotary, mrope_cos_sin, segment_ids, vision_cos_sin,  # noqa: E402
                                   vision_cu_seqlens, vision_position_ids, vision_window_index)
from skinr1_jax.model.text import DecoderLayer  # noqa: E402
from skinr1_jax.model.vision import PatchMerger, VisionBlock  # noqa: E402

TWO_GRIDS = ((1, 8, 8), (1, 6, 10))  # 4 full windows; 2 x 3 windows, some partial


pytestmark = pytest.mark.usefixtures("highest_precision")


@pytest.fixture(scope="module")
def hf(tiny_hf_checkpoint):
    cfg, hf_dir, model = tiny_hf_checkpoint
    loaded_cfg, variables = load_hf(hf_dir)
    assert loaded_cfg == cfg
    return cfg, variables, model


@pytest.fixture(scope="module")
def jit_forward():
    return jax.jit(forward, static_argnums=0, static_argnames=("grid_thw", "deterministic"))


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.array(x))


def test_text_rotary_matches_transformers(hf):
    cfg, _, model = hf
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 50, (3, 2, 7))
    rot = model.model.language_model.rotary_emb
    x = torch.zeros(1, dtype=torch.float32)
    cos_hf, sin_hf = rot(x, _t(pos))
    cos, sin = mrope_cos_sin(jnp.asarray(pos), cfg.text.head_dim, cfg.text.rope_theta,
                             cfg.text.mrope_section)
    np.testing.assert_allclose(cos, cos_hf.numpy(), atol=1e-6)
    np.testing.assert_allclose(sin, sin_hf.numpy(), atol=1e-6)
    q = rng.standard_normal((2, cfg.text.num_attention_heads, 7, cfg.text.head_dim)).astype(np.float32)
    q_hf, _ = hf_mod.apply_rotary_pos_emb(_t(q), _t(q), cos_hf, sin_hf)
    ours = apply_rotary(jnp.asarray(q.transpose(0, 2, 1, 3)), cos, sin)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 2, 1, 3), q_hf.numpy(), atol=1e-5)


def test_vision_indices_and_rotary_match_transformers(hf):
    cfg, _, model = hf
    v = cfg.vision
    grid = _t(np.array(TWO_GRIDS))
    pos_hf = vision_utils.get_vision_position_ids(grid, v.spatial_merge_size)
    np.testing.assert_array_equal(vision_position_ids(TWO_GRIDS, v.spatial_merge_size), pos_hf.numpy())
    win_hf, cu_hf = vision_utils.get_vision_window_index(grid, v.spatial_merge_size, v.window_size,
                                                         v.patch_size)
    win, cu = vision_window_index(TWO_GRIDS, v.spatial_merge_size, v.window_size, v.patch_size)
    np.testing.assert_array_equal(win, win_hf.numpy())
    np.testing.assert_array_equal(cu, cu_hf.numpy())
    assert len(cu) - 1 == 4 + 6  # windows really split the images
    np.testing.assert_array_equal(vision_cu_seqlens(TWO_GRIDS),
                                  vision_utils.get_vision_cu_seqlens(grid).numpy())
    cos_hf, sin_hf = model.model.visual.rotary_pos_emb(torch.zeros(1), pos_hf)
    cos, sin = vision_cos_sin(vision_position_ids(TWO_GRIDS, v.spatial_merge_size), v.head_dim)
    np.testing.assert_allclose(cos, cos_hf.numpy(), atol=1e-6)
    np.testing.assert_allclose(sin, sin_hf.numpy(), atol=1e-6)


def test_vision_block_matches_transformers(hf):
    cfg, variables, model = hf
    v = cfg.vision
    win, cu = vision_window_index(TWO_GRIDS, v.spatial_merge_size, v.window_size, v.patch_size)
    n = int(cu[-1])
    x = np.random.default_rng(1).standard_normal((n, v.hidden_size)).astype(np.float32)
    cos, sin = vision_cos_sin(vision_position_ids(TWO_GRIDS, v.spatial_merge_size), v.head_dim)
    with torch.no_grad():
        ref = model.model.visual.blocks[0](_t(x), cu_seqlens=_t(cu.astype(np.int32)),
                                           position_embeddings=(_t(cos), _t(sin))).numpy()
    seg = segment_ids(cu)
    ours = VisionBlock(cfg, 0).apply({"params": variables["params"]["visual"]["blocks_0"]},
                                     jnp.asarray(x), cos, sin, jnp.asarray(seg[:, None] == seg[None]))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_merger_matches_transformers(hf):
    cfg, variables, model = hf
    x = np.random.default_rng(2).standard_normal((32, cfg.vision.hidden_size)).astype(np.float32)
    with torch.no_grad():
        ref = model.model.visual.merger(_t(x)).numpy()
    ours = PatchMerger(cfg).apply({"params": variables["params"]["visual"]["merger"]}, jnp.asarray(x))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_decoder_layer_matches_transformers(hf):
    cfg, variables, model = hf
    t = cfg.text
    rng = np.random.default_rng(3)
    b, s = 2, 9
    x = rng.standard_normal((b, s, t.hidden_size)).astype(np.float32)
    pad = np.ones((b, s), bool)
    pad[1, :3] = False  # left padding in row 1
    causal = np.tril(np.ones((s, s), bool))[None] & pad[:, None, :]
    pos = np.broadcast_to(np.arange(s), (3, b, s)) + rng.integers(0, 3, (3, b, 1))
    cos, sin = mrope_cos_sin(jnp.asarray(pos), t.head_dim, t.rope_theta, t.mrope_section)
    additive = np.where(causal, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None]
    with torch.no_grad():
        ref = model.model.language_model.layers[0](
            _t(x), attention_mask=_t(additive), position_embeddings=(_t(cos), _t(sin))).numpy()
    ours, _ = DecoderLayer(cfg, 0).apply({"params": variables["params"]["language_model"]["layers_0"]},
                                         jnp.asarray(x), cos, sin, jnp.asarray(causal), None, None)
    np.testing.assert_allclose(np.asarray(ours)[pad], ref[pad], atol=1e-5)


def test_get_rope_index_matches_transformers(hf):
    cfg, _, model = hf
    batch = random_batch(cfg, TWO_GRIDS + ((1, 4, 4),), seed=4, batch_size=2)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any(), "the batch must be left padded"
    ids_t = _t(ids).long()
    pos_hf, delta_hf = model.model.get_rope_index(
        ids_t, mm_token_type_ids=(ids_t == cfg.image_token_id).int(),
        image_grid_thw=_t(np.array(batch["grid_thw"])), attention_mask=_t(mask))
    pos, delta = get_rope_index(cfg, ids, mask, batch["grid_thw"])
    real = mask.astype(bool)
    np.testing.assert_array_equal(pos[:, real], pos_hf.numpy()[:, real])
    # ours counts cache slots, transformers counts real tokens: they differ by the padding
    np.testing.assert_array_equal(delta, delta_hf.numpy()[:, 0] - (mask == 0).sum(1))


@pytest.mark.parametrize("grids,batch_size,text_len", [
    ((), 1, 5),                       # text only
    (((1, 8, 8),), 1, 5),             # one image
    (TWO_GRIDS, 1, 5),                # two images of different sizes in one sequence
    (TWO_GRIDS + ((1, 4, 4),), 2, 5),  # a batch with left padding
    # longer than 2 of the longest causal attention blocks, padding in the first block
    (TWO_GRIDS + ((1, 4, 4),), 2, 2 * CAUSAL_BLOCK_MAX // 3),
], ids=["text", "one_image", "two_images", "left_padded_batch", "long_left_padded_batch"])
def test_full_model_logits_match_transformers(hf, jit_forward, grids, batch_size, text_len):
    cfg, variables, model = hf
    batch = random_batch(cfg, grids, seed=5, batch_size=batch_size, text_len=text_len)
    assert text_len < 10 or batch["input_ids"].shape[1] > 2 * CAUSAL_BLOCK_MAX
    if batch_size > 1:
        assert (batch["attention_mask"] == 0).any()
    ours, _ = jit_forward(cfg, variables, _model_inputs(batch), grid_thw=batch["grid_thw"] or None)
    ref = hf_logits(model, batch)
    real = batch["attention_mask"].astype(bool)
    assert np.abs(ref[real]).std() > 0.1  # the reference is not trivially flat
    assert np.max(np.abs(np.asarray(ours)[real] - ref[real])) <= 1e-4


def _model_inputs(batch: dict) -> dict:
    keys = ("input_ids", "attention_mask", "position_ids", "pixel_values")
    return {k: batch[k] for k in keys if k in batch}


def test_cache_prefill_then_decode_equals_full_forward(hf, jit_forward):
    cfg, variables, _ = hf
    batch = random_batch(cfg, ((1, 8, 8), (1, 4, 4)), seed=6, batch_size=2, text_len=6)
    full, _ = jit_forward(cfg, variables, _model_inputs(batch), grid_thw=batch["grid_thw"])
    b, s = batch["input_ids"].shape
    prompt, total = s - 4, s + 3
    slot_mask = np.concatenate([batch["attention_mask"], np.ones((b, total - s), np.int32)], 1)
    # the tail after the last image is text: its positions are slot + rope_delta
    tail = np.arange(prompt, s)[None] + batch["rope_deltas"][:, None]
    np.testing.assert_array_equal(batch["position_ids"][:, :, prompt:], np.broadcast_to(tail, (3, b, 4)))

    cache = init_cache(cfg, b, total, jnp.float32)
    pre = {"input_ids": batch["input_ids"][:, :prompt], "attention_mask": slot_mask,
           "position_ids": batch["position_ids"][:, :, :prompt], "pixel_values": batch["pixel_values"]}
    logits, cache = jit_forward(cfg, variables, pre, grid_thw=batch["grid_thw"], cache=cache,
                                cache_index=0)
    real = batch["attention_mask"][:, :prompt].astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full)[:, :prompt][real], atol=1e-5)

    traces = []

    @jax.jit
    def decode(variables, ids, pos, cache, index):
        traces.append(1)
        return forward(cfg, variables, {"input_ids": ids, "attention_mask": slot_mask,
                                        "position_ids": pos}, cache=cache, cache_index=index)

    for i in range(prompt, s):
        logits, cache = decode(variables, batch["input_ids"][:, i:i + 1],
                               batch["position_ids"][:, :, i:i + 1], cache, np.int32(i))
        np.testing.assert_allclose(np.asarray(logits)[:, 0], np.asarray(full)[:, i], atol=1e-5)
    assert len(traces) == 1  # one compilation for every decode step


def test_remat_and_bf16_variants(hf, jit_forward):
    cfg, variables, _ = hf
    batch = random_batch(cfg, ((1, 8, 8),), seed=7)
    inputs = _model_inputs(batch)
    base, _ = jit_forward(cfg, variables, inputs, grid_thw=batch["grid_thw"])
    remat, _ = jit_forward(cfg.replace(remat=True), variables, inputs, grid_thw=batch["grid_thw"])
    np.testing.assert_allclose(remat, base, atol=1e-6)
    bf16 = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
    half, _ = jit_forward(bf16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), variables), inputs,
                          grid_thw=batch["grid_thw"])
    assert half.dtype == jnp.float32
    assert np.max(np.abs(np.asarray(half) - np.asarray(base))) < 0.1


@pytest.mark.parametrize("s", [128, 2 * CAUSAL_BLOCK_MAX + 37])
def test_blocked_causal_attention_equals_one_softmax(s):
    """Blocked causal attention gives the one-softmax result and gradients on every query row
    that sees a key (left padding leaves the first rows of row 1 empty), with blocks of a
    short sequence (4 of 32 rows) and of a long one (its last block partial)."""
    b, h, kv, d = 2, 4, 2, 8
    block = causal_block(s)
    assert s > block
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, s, h, d)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((b, kv, s, d)), jnp.float32) for _ in range(2))
    valid = np.ones((b, s), bool)
    valid[1, :block + 5] = False   # padding across the first block boundary
    mask = jnp.asarray(np.tril(np.ones((s, s), bool))[None] & valid[:, None, :])
    seen = np.asarray(mask).any(-1)         # query rows with at least one visible key

    def loss(causal, q, k, v):
        out = attention(q, k, v, mask, d ** -0.5, causal=causal)
        return jnp.sum(jnp.where(seen[..., None, None], out, 0.0) ** 2), out

    (l_full, full), g_full = jax.value_and_grad(loss, (1, 2, 3), has_aux=True)(False, q, k, v)
    (l_block, block), g_block = jax.value_and_grad(loss, (1, 2, 3), has_aux=True)(True, q, k, v)
    np.testing.assert_allclose(np.asarray(block)[seen], np.asarray(full)[seen], atol=1e-5)
    np.testing.assert_allclose(l_block, l_full, rtol=1e-5)
    for a, e in zip(g_block, g_full):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
