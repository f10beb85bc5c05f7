"""LayerNorm backward pass as one Pallas (Triton) kernel on GPU.

Why: XLA splits this backward into an input-gradient fusion, a float32 activation-sized product
dy·x̂ written to memory and a column reduction over all rows for the scale gradient; at the
student's shapes that is a visible share of a bf16 step (docs/performance.md). Here each program owns a tile of rows and
makes one pass: it reads x, dy and the residual-stream gradient, writes dx, and leaves one row of
partial scale/bias gradients per tile, which a tiny XLA sum finishes. Rows are padded to a power
of two in registers (Triton tiles must be), so any width works.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


def _kernel(x_ref, dy_ref, dres_ref, mean_ref, rstd_ref, scale_ref, dx_ref, dscale_ref, dbias_ref, *,
            rows: int, width: int, block_rows: int, block_width: int, centered: bool):
    r = pl.program_id(0) * block_rows + jnp.arange(block_rows)
    c = jnp.arange(block_width)
    row_ok, col_ok = r < rows, c < width
    ok = row_ok[:, None] & col_ok[None, :]
    at = (r[:, None], c[None, :])
    x = plgpu.load(x_ref.at[at], mask=ok, other=0.0).astype(jnp.float32)
    dy = plgpu.load(dy_ref.at[at], mask=ok, other=0.0).astype(jnp.float32)
    mean = plgpu.load(mean_ref.at[r], mask=row_ok, other=0.0)
    rstd = plgpu.load(rstd_ref.at[r], mask=row_ok, other=0.0)
    scale = plgpu.load(scale_ref.at[c], mask=col_ok, other=0.0)
    xhat = jnp.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
    g = dy * scale[None, :]
    mean_gx = jnp.sum(g * xhat, axis=1) / width
    if centered:
        g = g - (jnp.sum(g, axis=1) / width)[:, None]
    dx = (g - xhat * mean_gx[:, None]) * rstd[:, None]
    if dres_ref is not None:
        dx += plgpu.load(dres_ref.at[at], mask=ok, other=0.0).astype(jnp.float32)
    plgpu.store(dx_ref.at[at], dx.astype(dx_ref.dtype), mask=ok)
    tile = pl.program_id(0)
    plgpu.store(dscale_ref.at[tile, c], jnp.sum(dy * xhat, axis=0), mask=col_ok)
    if dbias_ref is not None:
        plgpu.store(dbias_ref.at[tile, c], jnp.sum(dy, axis=0), mask=col_ok)


def layer_norm_backward(x_RD, dy_RD, dres_RD, mean_R, rstd_R, scale_D, *, with_bias: bool,
                        centered: bool = True, block_rows: int = 16, interpret: bool = False):
    """(dx, d_scale, d_bias or None) of y = (x - mean)·rstd·scale (+ bias), plus dres when given;
    centered=False: RMSNorm's (mean is 0 and does not depend on x).

    x, dy, dres: (rows, width), any float dtype (dx takes x's); mean, rstd: float32 (rows,).
    """
    R, D = x_RD.shape
    tiles = pl.cdiv(R, block_rows)
    block_width = pl.next_power_of_2(D)
    kernel = functools.partial(_kernel, rows=R, width=D, block_rows=block_rows, block_width=block_width,
                               centered=centered)
    partial_shape = jax.ShapeDtypeStruct((tiles, D), jnp.float32)
    out_shape = [jax.ShapeDtypeStruct(x_RD.shape, x_RD.dtype), partial_shape] + ([partial_shape] if with_bias else [])
    has_dres = dres_RD is not None

    def body(x, dy, *rest):
        dres, (mean, rstd, scale, dx, dscale, *dbias) = (rest[0], rest[1:]) if has_dres else (None, rest)
        kernel(x, dy, dres, mean, rstd, scale, dx, dscale, dbias[0] if dbias else None)

    inputs = [x_RD, dy_RD] + ([dres_RD] if has_dres else []) + [mean_R, rstd_R, scale_D.astype(jnp.float32)]
    outs = pl.pallas_call(
        body, grid=(tiles,), out_shape=out_shape, interpret=interpret, name="layer_norm_backward",
        compiler_params=plgpu.CompilerParams(num_warps=4 if block_rows * block_width <= 8192 else 8, num_stages=1),
    )(*inputs)
    dx, dscale = outs[0], jnp.sum(outs[1], axis=0)
    return dx, dscale, (jnp.sum(outs[2], axis=0) if with_bias else None)
