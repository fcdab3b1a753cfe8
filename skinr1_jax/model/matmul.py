"""Matrix products for low-precision compute: operands in the compute dtype, float32 results.

A bfloat16 x bfloat16 product that returns bfloat16 takes XLA:CPU's slow path (measured on an
AVX512-BF16 CPU at 1024x128x256: 115 GFLOP/s against 237 for the same product returning
float32, and 144 for float32 operands), and it rounds the accumulator's result once more. `mixed_einsum` keeps the
result in float32, and its gradient does the same for the two transposed products: the
cotangent is cast to the compute dtype, each product returns float32, and an operand's
gradient comes back in that operand's own dtype (a float32 parameter's gradient is never
rounded to bfloat16). On TPU and GPU the same products run on the matrix units with float32
accumulation, as they would anyway.

In float32 compute it is exactly `jnp.einsum`: the float32 programs are unchanged.
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
    if dtype == jnp.float32:
        return jnp.einsum(spec, a.astype(dtype), b.astype(dtype))
    _subscripts(spec)   # checked before tracing, so a bad spec fails here, naming itself
    return _low_precision_einsum(spec, dtype, a, b)


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
def _low_precision_einsum(spec: str, dtype: jnp.dtype, a: jnp.ndarray, b: jnp.ndarray
                          ) -> jnp.ndarray:
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _forward(spec: str, dtype: jnp.dtype, a: jnp.ndarray, b: jnp.ndarray):
    return _low_precision_einsum(spec, dtype, a, b), (a, b)


def _backward(spec: str, dtype: jnp.dtype, residuals, g: jnp.ndarray):
    a, b = residuals
    sa, sb, out = _subscripts(spec)
    g = g.astype(dtype)
    da = jnp.einsum(f"{out},{sb}->{sa}", g, b.astype(dtype), preferred_element_type=jnp.float32)
    db = jnp.einsum(f"{sa},{out}->{sb}", a.astype(dtype), g, preferred_element_type=jnp.float32)
    return da.astype(a.dtype), db.astype(b.dtype)


_low_precision_einsum.defvjp(_forward, _backward)
