"""Row log-sum-exp of the MLM logits in one pass, as a Pallas (Triton) kernel on GPU.

Why: XLA takes the log-sum-exp of the (masked tokens × vocab) logits, ~1e9 bfloat16 values at
batch 128, as two passes (row max, then the sum of exponentials; timed in docs/performance.md). An online
softmax (running max, rescaled running sum) needs one read of the logits.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_LOG2E = math.log2(math.e)


def _kernel(x_ref, lse_ref, *, rows: int, cols: int, block_rows: int, block_cols: int):
    r = pl.program_id(0) * block_rows + jnp.arange(block_rows)
    row_ok = r < rows

    def chunk(j, carry):
        m, s = carry  # running max and sum of 2^(x - max), base 2
        c = j * block_cols + jnp.arange(block_cols)
        ok = row_ok[:, None] & (c < cols)[None, :]
        x = plgpu.load(x_ref.at[r[:, None], c[None, :]], mask=ok, other=-jnp.inf).astype(jnp.float32) * _LOG2E
        m_new = jnp.maximum(m, jnp.max(x, axis=1))
        return m_new, s * jnp.exp2(m - m_new) + jnp.sum(jnp.exp2(x - m_new[:, None]), axis=1)

    init = (jnp.full((block_rows,), -jnp.inf, jnp.float32), jnp.zeros((block_rows,), jnp.float32))
    m, s = lax.fori_loop(0, pl.cdiv(cols, block_cols), chunk, init)
    plgpu.store(lse_ref.at[r], (m + jnp.log2(s)) / _LOG2E, mask=row_ok)


def logsumexp_rows(x_NV, *, block_rows: int = 8, block_cols: int = 1024, interpret: bool = False):
    """float32 log(sum(exp(x), axis=-1)) of a 2-D array of finite values, in one pass over it."""
    N, V = x_NV.shape
    kernel = functools.partial(_kernel, rows=N, cols=V, block_rows=block_rows, block_cols=block_cols)
    return pl.pallas_call(
        kernel, grid=(pl.cdiv(N, block_rows),), out_shape=jax.ShapeDtypeStruct((N,), jnp.float32),
        interpret=interpret, name="logsumexp_rows",
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=3),
    )(x_NV)
