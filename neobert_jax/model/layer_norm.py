"""LayerNorm with a hand-written backward pass.

Autodiff of a float32 LayerNorm over bfloat16 activations materializes float32 intermediates
of activation size in the backward pass. This VJP keeps only the input and two float32
scalars per token, and forms the input gradient in one pass over (dy, x).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x, scale, bias, eps: float, out_dtype):
    """torch.nn.LayerNorm (biased variance) in float32; `bias` may be None."""
    return _forward(x, scale, bias, eps, out_dtype)[0]


def _forward(x, scale, bias, eps, out_dtype):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + eps)
    y = (x32 - mean) * rstd * scale
    if bias is not None:
        y = y + bias
    return y.astype(out_dtype), (x, scale, bias, mean, rstd)


def _backward(eps, out_dtype, residuals, dy):
    x, scale, bias, mean, rstd = residuals
    xhat = (x.astype(jnp.float32) - mean) * rstd
    dy32 = dy.astype(jnp.float32)
    g = dy32 * scale
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    d_scale = jnp.sum(dy32 * xhat, axis=rows)
    d_bias = None if bias is None else jnp.sum(dy32, axis=rows)
    return dx.astype(x.dtype), d_scale, d_bias


layer_norm.defvjp(lambda x, scale, bias, eps, out_dtype: _forward(x, scale, bias, eps, out_dtype), _backward)
