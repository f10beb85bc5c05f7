"""LayerNorm and RMSNorm, and the residual add fused with each, with hand-written backward passes.

Autodiff of a float32 LayerNorm over bfloat16 activations materializes float32 intermediates
of activation size in the backward pass. These VJPs keep only the input and two float32 scalars
per token. On GPU the backward pass is one Pallas kernel (layer_norm_pallas) that also adds the
residual stream's gradient, so each pre-norm residual block costs one read-modify-write pass.
RMSNorm (NeoBERT's) is the same computation with the mean fixed at 0 (`centered=False`), so it
shares every line, the kernel included.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from neobert_jax.config import kernel_backend
from neobert_jax.model.shards import per_batch_shard


def _statistics(x, scale, bias, eps, out_dtype, centered=True):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True) if centered else jnp.zeros(x32.shape[:-1] + (1,), jnp.float32)
    rstd = jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + eps)
    y = (x32 - mean) * rstd * scale
    if bias is not None:
        y = y + bias
    return y.astype(out_dtype), mean, rstd


def _input_grads(x, mean, rstd, scale, with_bias, dy, dres, backward: str, mesh, centered=True):
    """(dx [+ dres], d_scale, d_bias) through the kernel or XLA, as `backward`
    (ModernBertConfig.layer_norm_backward) says; the kernel per device of `mesh` (model/shards.py)."""
    mode = kernel_backend(backward, jax.default_backend())
    if mode != "xla":
        from neobert_jax.model.layer_norm_pallas import layer_norm_backward

        def kernel(x, dy, mean, rstd, scale, *dres):
            flat = lambda a: a.reshape(-1, a.shape[-1])
            dx, d_scale, d_bias = layer_norm_backward(
                flat(x), flat(dy), flat(dres[0]) if dres else None, mean.reshape(-1), rstd.reshape(-1), scale,
                with_bias=with_bias, centered=centered, interpret=mode == "interpret")
            return (dx.reshape(x.shape), d_scale) + ((d_bias,) if with_bias else ())

        extra = () if dres is None else (dres,)
        run = per_batch_shard(kernel, mesh, ("rows",) * 4 + ("whole",) + ("rows",) * len(extra),
                              ("rows", "sum") + (("sum",) if with_bias else ()))
        dx, d_scale, *d_bias = run(x, dy, mean, rstd, scale, *extra)
        return dx, d_scale, (d_bias[0] if with_bias else None)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    dy32 = dy.astype(jnp.float32)
    g = dy32 * scale
    dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdims=True))
    if centered:
        dx = dx - rstd * g.mean(-1, keepdims=True)
    if dres is not None:
        dx = dx + dres.astype(jnp.float32)
    rows = tuple(range(x.ndim - 1))
    d_bias = jnp.sum(dy32, axis=rows) if with_bias else None
    return dx.astype(x.dtype), jnp.sum(dy32 * xhat, axis=rows), d_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def layer_norm(x, scale, bias, eps: float, out_dtype, backward: str = "auto", mesh=None, centered: bool = True):
    """torch.nn.LayerNorm (biased variance) in float32; `bias` may be None. backward, mesh: the
    backward pass's (ModernBertConfig.layer_norm_backward, ModernBertConfig.mesh). centered=False: RMSNorm."""
    return _statistics(x, scale, bias, eps, out_dtype, centered)[0]


def _norm_forward(x, scale, bias, eps, out_dtype, backward, mesh, centered):
    y, mean, rstd = _statistics(x, scale, bias, eps, out_dtype, centered)
    return y, (x, scale, bias, mean, rstd)


def _norm_backward(eps, out_dtype, backward, mesh, centered, residuals, dy):
    x, scale, bias, mean, rstd = residuals
    return _input_grads(x, mean, rstd, scale, bias is not None, dy, None, backward, mesh, centered)


layer_norm.defvjp(_norm_forward, _norm_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def add_layer_norm(h, delta, scale, bias, eps: float, out_dtype, backward: str = "auto", mesh=None,
                   centered: bool = True):
    """(h + delta, layer_norm(h + delta)): a pre-norm residual step whose backward is one pass."""
    s = h + delta
    return s, _statistics(s, scale, bias, eps, out_dtype, centered)[0]


def _add_forward(h, delta, scale, bias, eps, out_dtype, backward, mesh, centered):
    s = h + delta
    y, mean, rstd = _statistics(s, scale, bias, eps, out_dtype, centered)
    # two empty scalars carry h's and delta's dtypes, which their cotangents must have
    return (s, y), (s, scale, bias, mean, rstd, jnp.zeros((), h.dtype), jnp.zeros((), delta.dtype))


def _add_backward(eps, out_dtype, backward, mesh, centered, residuals, cotangents):
    s, scale, bias, mean, rstd, h_like, delta_like = residuals
    ds, dy = cotangents
    dx, d_scale, d_bias = _input_grads(s, mean, rstd, scale, bias is not None, dy, ds, backward, mesh, centered)
    return dx.astype(h_like.dtype), dx.astype(delta_like.dtype), d_scale, d_bias


add_layer_norm.defvjp(_add_forward, _add_backward)


def rms_norm(x, scale, eps: float, out_dtype, backward: str = "auto", mesh=None):
    """x / sqrt(mean(x²) + eps) · scale in float32 (no bias): `layer_norm` with the mean fixed at 0."""
    return layer_norm(x, scale, None, eps, out_dtype, backward, mesh, False)


def add_rms_norm(h, delta, scale, eps: float, out_dtype, backward: str = "auto", mesh=None):
    """(h + delta, rms_norm(h + delta)), as `add_layer_norm`."""
    return add_layer_norm(h, delta, scale, None, eps, out_dtype, backward, mesh, False)
