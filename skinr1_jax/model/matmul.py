"""Matrix products for low-precision compute: operands in the compute dtype, float32 results.

A bfloat16 x bfloat16 product that returns bfloat16 takes XLA:CPU's slow path (measured on an
AVX512-BF16 CPU at 1024x128x256: 115 GFLOP/s against 237 for the same product returning
float32, and 144 for float32 operands), and it rounds the accumulator's result once more. `mixed_einsum` keeps the
result in float32, and its gradient does the same for the two transposed products: the
cotangent is cast to the compute dtype, each product returns float32, and an operand's
gradient comes back in that operand's own dtype (a float32 parameter's gradient is never
rounded to bfloat16). On TPU and GPU the same products run on the matrix units with float32
accumulation, as they would anyway.

In float32 compute the value is exactly `jnp.einsum`'s, and off CPU so is the whole program.
On XLA:CPU some gradient products take a faster form (`_gradient_product`): the key and
value gradients of attention, as autodiff writes them, contract the query axis, the leading
(non-minor) axis of both operands, and XLA:CPU runs that product at under half the speed of
the same product with its last two output axes swapped (the tiny model's [16 x 128 x 32]
gradients over 256 queries: ~1.5 ms against ~0.6-0.8 ms).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def mixed_einsum(spec: str, a: jnp.ndarray, b: jnp.ndarray, dtype: str | jnp.dtype
                 ) -> jnp.ndarray:
    """einsum(spec, a, b) with both operands cast to `dtype`, as float32.

    `spec` is a two-operand contraction "A,B->C" in which every index of an operand appears in
    the other operand or in C (what a matmul, batched or not, is), so that each operand's
    gradient is itself one such product."""
    dtype = jnp.dtype(dtype)
    _subscripts(spec)   # checked before tracing, so a bad spec fails here, naming itself
    if dtype == jnp.float32 and not _on_cpu():
        return jnp.einsum(spec, a.astype(dtype), b.astype(dtype))
    return _einsum(spec, dtype, a, b)


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _subscripts(spec: str) -> tuple[str, str, str]:
    """(A, B, C) of "A,B->C", checked to be a product whose operand gradients are products."""
    try:
        ins, out = spec.replace(" ", "").split("->")
        sa, sb = ins.split(",")
    except ValueError:
        raise ValueError(f"mixed_einsum: spec {spec!r} is not of the form 'A,B->C'") from None
    for own, other in ((sa, sb), (sb, sa)):
        lost = set(own) - set(other) - set(out)
        if lost or len(set(own)) != len(own):
            raise ValueError(f"mixed_einsum: spec {spec!r}: operand {own!r} has an index "
                             f"summed on its own or repeated ({sorted(lost) or own})")
    return sa, sb, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _einsum(spec: str, dtype: jnp.dtype, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _forward(spec: str, dtype: jnp.dtype, a: jnp.ndarray, b: jnp.ndarray):
    return _einsum(spec, dtype, a, b), (a, b)


def _backward(spec: str, dtype: jnp.dtype, residuals, g: jnp.ndarray):
    a, b = residuals
    sa, sb, out = _subscripts(spec)
    g = g.astype(dtype)
    da = _gradient_product(out, sb, sa, g, b.astype(dtype))
    db = _gradient_product(sa, out, sb, a.astype(dtype), g)
    return da.astype(a.dtype), db.astype(b.dtype)


_einsum.defvjp(_forward, _backward)


def _gradient_product(sx: str, sy: str, out: str, x: jnp.ndarray, y: jnp.ndarray
                      ) -> jnp.ndarray:
    """einsum(f"{sx},{sy}->{out}", x, y) as float32 (an operand's gradient, its subscripts
    already parsed). On XLA:CPU, a product that contracts a leading axis of both operands (a
    "TN" product, which Eigen runs, not YNNPACK) takes a faster form:
    batched, it writes its last two output axes swapped and transposes them back; 2-D with an
    output at least 128 tall and 8 times wider (the LM head's kernel gradient), it multiplies
    a transposed copy of x (a plain product, YNNPACK's: 0.72-0.96 of the time at 128 x 2048
    over 256-1024 tokens; it loses at 128 x 256, and at 8 x 128, a LoRA B's gradient). The
    barriers keep XLA's simplifier from folding the transposes into the product, which would
    restore the slow form."""
    contracted = (set(sx) & set(sy)) - set(out)
    f32 = jnp.float32
    if _on_cpu() and sx[-1] not in contracted and sy[-1] not in contracted:
        if len(out) > 2:
            swapped = out[:-2] + out[-1] + out[-2]
            product = jnp.einsum(f"{sx},{sy}->{swapped}", x, y, preferred_element_type=f32)
            return jnp.swapaxes(jax.lax.optimization_barrier(product), -1, -2)
        if len(sx) == len(sy) == 2 and x.shape[1] >= 128 and y.shape[1] >= 8 * x.shape[1]:
            xt = jax.lax.optimization_barrier(x.T)
            return jnp.einsum(f"{sx[::-1]},{sy}->{out}", xt, y, preferred_element_type=f32)
    return jnp.einsum(f"{sx},{sy}->{out}", x, y, preferred_element_type=f32)
