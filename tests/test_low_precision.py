"""Low-precision compute: bfloat16 products with float32 results and float32 parameter
gradients (model.matmul.mixed_einsum), RMSNorm's scale gradient in float32, float32 compute
left exactly as plain einsum (on CPU, some gradient products in XLA:CPU's faster forms), and
`matmul_dtype` (bfloat16 products, float32 activations)."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from skinr1_jax.model import forward, init_variables, tiny_config
from skinr1_jax.model.config import validate
from skinr1_jax.model.convert import random_batch
from skinr1_jax.model.layers import Linear, RMSNorm, attention
from skinr1_jax.model.matmul import mixed_einsum

BF16 = jnp.bfloat16


def _rounded(x: jax.Array) -> jax.Array:
    return x.astype(BF16).astype(jnp.float32)


def _operands(shape_a, shape_b, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(shape_a), jnp.float32),
            jnp.asarray(rng.standard_normal(shape_b), jnp.float32))


@pytest.mark.parametrize("spec,shape_a,shape_b", [
    ("ti,io->to", (64, 48), (48, 80)),
    ("bkqd,bktd->bkqt", (2, 3, 16, 8), (2, 3, 24, 8)),
    ("bkqt,bktd->bkqd", (2, 3, 16, 24), (2, 3, 24, 8)),
])
def test_float32_is_plain_einsum(spec, shape_a, shape_b):
    a, b = _operands(shape_a, shape_b)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(jnp.einsum(spec, a, b).shape),
                      jnp.float32)

    def vjp(fn):
        out, pull = jax.vjp(fn, a, b)
        return (out, *pull(cot))

    ours = jax.jit(lambda: vjp(lambda a, b: mixed_einsum(spec, a, b, "float32")))()
    plain = jax.jit(lambda: vjp(lambda a, b: jnp.einsum(spec, a, b)))()
    for x, y in zip(ours, plain):
        np.testing.assert_array_equal(x, y)


def _physical_dot_shapes(hlo: str) -> list[tuple[int, ...]]:
    """Each dot's result shape in memory order (its dims ordered major to minor by layout)."""
    shapes = []
    for dims, layout in re.findall(r"= f32\[([\d,]+)\]\{([\d,]+)\} dot\(", hlo):
        dims = [int(x) for x in dims.split(",")]
        shapes.append(tuple(dims[int(i)] for i in reversed(layout.split(","))))
    return shapes


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batched_gradient_contracting_leading_axes_is_computed_transposed_on_cpu(dtype):
    """Attention's key gradient contracts the query axis, leading in both of its operands:
    XLA:CPU runs that product at under half speed when it writes [.., keys, head_dim], so
    mixed_einsum's gradient has it write [.., head_dim, keys] (and transposes after)."""
    assert jax.default_backend() == "cpu"
    spec, a, b = "bkqd,bktd->bkqt", *_operands((2, 3, 16, 8), (2, 3, 24, 8))
    cot = jnp.ones((2, 3, 16, 24), jnp.float32)
    grads = jax.jit(lambda a, b, c: jax.vjp(lambda a, b: mixed_einsum(spec, a, b, dtype), a, b)[1](c))
    shapes = _physical_dot_shapes(grads.lower(a, b, cot).compile().as_text())
    assert (2, 3, 8, 24) in shapes and (2, 3, 24, 8) not in shapes, shapes
    _, ref_pull = jax.vjp(lambda a, b: jnp.einsum(spec, a, b, precision="highest"), a, b)
    if dtype == "float32":
        for x, y in zip(grads(a, b, cot), ref_pull(cot)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("features,transposed", [(2048, True), (256, False)])
def test_wide_kernel_gradient_multiplies_a_transposed_input_on_cpu(features, transposed):
    """A linear layer's kernel gradient x^T dy (contracting tokens, the leading axis of both)
    multiplies a materialised x^T when the kernel is at least 128 tall and 8x wider (the LM
    head), and is left to XLA otherwise."""
    x, w = _operands((40, 128), (128, features))
    cot = jnp.ones((40, features), jnp.float32)
    grads = jax.jit(lambda x, w, c: jax.vjp(
        lambda x, w: mixed_einsum("ti,io->to", x, w, "float32"), x, w)[1](c))
    hlo = grads.lower(x, w, cot).compile().as_text()
    assert bool(re.search(r"= f32\[128,40\]\{1,0\} (transpose|copy|fusion)", hlo)) == transposed
    _, ref_pull = jax.vjp(lambda x, w: jnp.einsum("ti,io->to", x, w, precision="highest"), x, w)
    for a, e in zip(grads(x, w, cot), ref_pull(cot)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("spec,shape_a,shape_b", [
    ("ti,io->to", (64, 48), (48, 80)),
    ("bkqd,bktd->bkqt", (2, 3, 16, 8), (2, 3, 24, 8)),
    ("bkqt,bktd->bkqd", (2, 3, 16, 24), (2, 3, 24, 8)),
])
def test_bfloat16_products_return_float32_and_exact_gradients(spec, shape_a, shape_b):
    """Value and both gradients equal float32 products of the bfloat16-rounded operands (and
    cotangent); a bfloat16 activation's gradient comes back bfloat16, a float32 parameter's
    float32 and not rounded to bfloat16."""
    a, b = _operands(shape_a, shape_b)
    a16 = a.astype(BF16)                     # an activation in the compute dtype
    out, pull = jax.vjp(lambda a, b: mixed_einsum(spec, a, b, BF16), a16, b)
    assert out.dtype == jnp.float32
    ref_out = jnp.einsum(spec, _rounded(a), _rounded(b), precision="highest")
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)

    cot = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape), jnp.float32)
    da, db = pull(cot)
    assert da.dtype == BF16 and db.dtype == jnp.float32
    _, ref_pull = jax.vjp(lambda a, b: jnp.einsum(spec, a, b, precision="highest"),
                          _rounded(a), _rounded(b))
    ref_da, ref_db = ref_pull(_rounded(cot))
    np.testing.assert_allclose(da.astype(jnp.float32), _rounded(ref_da), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(db, ref_db, rtol=1e-5, atol=1e-5)
    # A bfloat16 round trip would change almost every entry of a float32 gradient.
    assert np.mean(np.asarray(db) != np.asarray(_rounded(db))) > 0.9


@pytest.mark.parametrize("spec", ["ti,io", "ii,io->o", "ti,jo->to", "ab,bc,cd->ad"])
def test_unsupported_spec_names_itself(spec):
    a, b = _operands((4, 4), (4, 4))
    with pytest.raises(ValueError, match="mixed_einsum: spec"):
        mixed_einsum(spec, a, b, BF16)


def test_rmsnorm_scale_gradient_is_float32_in_bfloat16_compute():
    """The scale's gradient is a float32 sum over tokens of g * normalised x (each rounded to
    bfloat16 only where the compute dtype holds them), not a bfloat16 one."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((256, 32)), BF16)
    cot = jnp.asarray(rng.standard_normal((256, 32)), BF16)
    norm = RMSNorm(1e-6, "embed", dtype="bfloat16", param_dtype="float32")
    params = nn.unbox(norm.init(jax.random.key(0), x))
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.uniform(0.5, 1.5, p.shape), p.dtype),
                          params)
    out, pull = jax.vjp(lambda p: norm.apply(p, x), params)
    assert out.dtype == BF16
    (grad,) = pull(cot)
    scale_grad = grad["params"]["scale"]
    assert scale_grad.dtype == jnp.float32
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
    expected = jnp.sum(cot.astype(jnp.float32) * normed, axis=0)
    np.testing.assert_allclose(scale_grad, expected, rtol=1e-5, atol=1e-4)
    assert np.mean(np.asarray(scale_grad) != np.asarray(_rounded(scale_grad))) > 0.9


def test_linear_with_bfloat16_products_keeps_float32_activations():
    """matmul_dtype="bfloat16", dtype="float32": the product of the rounded input and kernel,
    returned (and its input gradient) in float32."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 24)), jnp.float32)
    lin = Linear(32, ("embed", "mlp"), "model.language_model.layers.0.mlp.up_proj",
                 use_bias=False, matmul_dtype="bfloat16")
    params = nn.unbox(lin.init(jax.random.key(0), x))
    params = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    out, pull = jax.vjp(lambda x: lin.apply(params, x), x)
    assert out.dtype == jnp.float32
    kernel = params["params"]["kernel"]
    np.testing.assert_allclose(out, _rounded(x) @ _rounded(kernel), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, jnp.dot(x, kernel, precision="highest"), rtol=1e-5, atol=1e-5)
    (dx,) = pull(jnp.ones_like(out))
    assert dx.dtype == jnp.float32


def test_attention_with_bfloat16_products():
    """Both attention products take bfloat16 operands (scores from rounded q, k; values from
    rounded probabilities and v), softmax and output stay float32."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 6, 2, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((1, 1, 6, 8)), jnp.float32) for _ in range(2))
    out = attention(q, k, v, None, 0.35, matmul_dtype="bfloat16")
    assert out.dtype == jnp.float32
    logits = np.einsum("bshd,bktd->bhst", _rounded(q), _rounded(k)) * 0.35
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    ref = np.einsum("bhst,bktd->bshd", _rounded(jnp.asarray(probs, jnp.float32)), _rounded(v))
    ref = ref / probs.sum(-1)[..., None].transpose(0, 2, 1, 3)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_model_with_bfloat16_products_stays_close_to_float32():
    cfg = tiny_config(vocab_size=64)
    grid = ((1, 4, 4),)
    batch = random_batch(cfg, grid, seed=0)
    variables = init_variables(cfg, jax.random.key(0))
    f32, _ = forward(cfg, variables, batch, grid_thw=grid)
    mixed, _ = forward(cfg.replace(matmul_dtype="bfloat16"), variables, batch, grid_thw=grid)
    assert mixed.dtype == jnp.float32
    diff = float(jnp.max(jnp.abs(mixed - f32)))
    assert 0 < diff < 2e-2 * float(jnp.max(jnp.abs(f32)))


@pytest.mark.parametrize("bad", ["float16", "bf16"])
def test_bad_matmul_dtype_names_itself(bad):
    with pytest.raises(ValueError, match="matmul_dtype"):
        validate(tiny_config().replace(matmul_dtype=bad))
