"""Float32 products as three TF32 passes written out (`model.tf32_split`).

The fp32 policy on GPU multiplies with XLA's TF32_TF32_F32_X3 algorithm, which XLA runs as Triton
GEMM fusions; its autotuner cannot offer cuBLAS for them, and the weight gradients' long-K products
land in split-K Triton configs far below the TF32 rate (docs/performance.md). Written out here —
hi = x rounded to TF32, lo = x - hi, then lo·hi + hi·lo + hi·hi as three one-pass TF32 products —
each pass is a plain TF32 dot, for which the autotuner weighs cuBLAS against Triton. The result is
as accurate as the X3 algorithm (the dropped lo·lo term is below float32's rounding).

Off the GPU there is no TF32: a pass is emulated (operands rounded to TF32, then a float32 product),
which gives the GPU's numbers up to summation order, so the CPU tests check the arithmetic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def round_to_tf32(x):
    """x (float32) rounded to the nearest TF32 value (10 mantissa bits), ties to even."""
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    bits = (bits + jnp.uint32(0x0FFF) + ((bits >> 13) & jnp.uint32(1))) & jnp.uint32(0xFFFFE000)
    return lax.bitcast_convert_type(bits, jnp.float32)


def split(x):
    """(hi, lo): hi = x rounded to TF32, lo = x - hi (exact in float32)."""
    hi = round_to_tf32(x)
    return hi, x - hi


def one_pass(a, b, emulate: bool):
    """a (..., K) @ b (K, N) in one TF32 pass (float32 accumulation)."""
    dims = (((a.ndim - 1,), (0,)), ((), ()))
    if emulate:
        return lax.dot_general(round_to_tf32(a), round_to_tf32(b), dims,
                               precision=lax.DotAlgorithmPreset.F32_F32_F32)
    return lax.dot_general(a, b, dims, precision=lax.DotAlgorithmPreset.TF32_TF32_F32)


def three_pass(a, b, emulate: bool):
    """a (..., K) @ b (K, N), float32-accurate, as three TF32 passes (small terms first)."""
    (a_hi, a_lo), (b_hi, b_lo) = split(a), split(b)
    return (one_pass(a_lo, b_hi, emulate) + one_pass(a_hi, b_lo, emulate)) + one_pass(a_hi, b_hi, emulate)


def applies(config, dtype) -> bool:
    """Whether a model config (either family) asks for written-out passes for products in `dtype`: only
    under the fp32 GPU policy (tf32x3), with model.tf32_split on."""
    return bool(config.tf32x3 and config.tf32_split) and jnp.dtype(dtype) == jnp.float32


def emulated() -> bool:
    """Whether this platform lacks TF32 (all but the GPU), so that passes are emulated."""
    return jax.default_backend() != "gpu"


@jax.custom_vjp
def matmul(x, w):
    """x (..., K) @ w (K, N) in float32 by `three_pass`; the gradients' products are three passes too."""
    return three_pass(x, w, emulated())


def _forward(x, w):
    return matmul(x, w), (x, w)


def _backward(residuals, g):
    x, w = residuals
    emulate = emulated()
    d_x = three_pass(g, w.T, emulate)
    d_w = three_pass(x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]), emulate)
    return d_x, d_w


matmul.defvjp(_forward, _backward)
