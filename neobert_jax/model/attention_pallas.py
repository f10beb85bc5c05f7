"""Flash attention for GPU in Pallas (Triton lowering): packed-row segment ids and a local window.

Why our own kernel: XLA's attention writes B·N·T² logits to memory, cuDNN's fused kernel (jax.nn)
takes neither segment ids nor a two-sided window, and packed rows and local layers (|i - j| <= 64)
leave most (query tile, key tile) pairs with no visible pair at all. Each program holds one tile of
`block_q` rows and streams tiles of `block_k` rows, but only over the contiguous range of tiles that
can hold a visible pair: tiles whose [min, max] of non-padding segment ids overlap, intersected with
the window band. Segments are contiguous in a packed row, so that range is exact and local layers
cost O(T·window). For any other layout the range still covers every visible tile and the in-tile
mask stays exact. Inside the range, a run of full tiles (one document, inside the window) is swept
without the mask.

Visibility is symmetric (same non-zero segment, |i - j| <= window), so the forward, dq and dk/dv
kernels share one table of tile ranges; the dk/dv kernel holds `block_q` keys and streams `block_k`
queries. Softmax runs in base 2 in float32; padding queries get zeros and an infinite logsumexp, so
the backward pass gives them no gradient either. fp32 inputs use exact or 3-pass TF32 dots, never
single-pass TF32.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_LOG2E = math.log2(math.e)
_MASKED = -0.7 * float(np.finfo(np.float32).max)  # finite: a fully masked tile gives no NaN


@dataclasses.dataclass(frozen=True)
class _Config:
    block_q: int
    block_k: int
    window: int | None
    scale: float
    num_warps: int
    num_stages: int
    interpret: bool
    tf32x3: bool
    rope: bool  # q and k arrive unrotated, with RoPE cos/sin half-tables, and are rotated as tiles load


def _tile_ranges(segment_ids_BT, block_q, block_k, window):
    """Which `block_k` tiles each `block_q` tile sweeps: (B, 4, T // block_q) int32 [lo, flo, fhi, hi].

    [lo, hi) holds every tile with a visible pair (lo = hi = 0 when none); [flo, fhi) within it is a
    run of full tiles (every pair visible: one document, inside the window) that need no mask, and
    flo = fhi = hi when there is none. Padding (id 0) is left out of the visibility test, so an
    all-padding tile sees nothing and nothing sees it.
    """
    B, T = segment_ids_BT.shape
    nq, nk = T // block_q, T // block_k
    big = jnp.iinfo(jnp.int32).max

    def id_stats(block):  # min over non-padding ids, min over all ids, max
        seg_BXb = segment_ids_BT.reshape(B, T // block, block)
        return jnp.min(jnp.where(seg_BXb == 0, big, seg_BXb), -1), jnp.min(seg_BXb, -1), jnp.max(seg_BXb, -1)

    (qmin, qmin0, qmax), (kmin, kmin0, kmax) = (
        tuple(x[:, :, None] for x in id_stats(block_q)), tuple(x[:, None, :] for x in id_stats(block_k)))
    visible_BQK = (qmin <= kmax) & (kmin <= qmax)
    full_BQK = (qmin0 == qmax) & (kmin0 == kmax) & (qmin0 == kmin0) & (qmin0 != 0)
    if window is not None:
        q0, k0 = np.arange(nq)[:, None] * block_q, np.arange(nk)[None, :] * block_k
        visible_BQK &= (k0 <= q0 + block_q - 1 + window) & (k0 + block_k - 1 >= q0 - window)
        full_BQK &= (k0 + block_k - 1 - q0 <= window) & (q0 + block_q - 1 - k0 <= window)
    kj = jnp.arange(nk, dtype=jnp.int32)
    hi = jnp.max(jnp.where(visible_BQK, kj + 1, 0), -1)
    lo = jnp.minimum(jnp.min(jnp.where(visible_BQK, kj, nk), -1), hi)
    flo = jnp.min(jnp.where(full_BQK, kj, nk), -1)
    fhi = jnp.min(jnp.where(~full_BQK & (kj > flo[..., None]), kj, nk), -1)  # end of the first full run
    any_full = flo < nk
    flo, fhi = jnp.where(any_full, flo, hi), jnp.where(any_full, fhi, hi)
    return jnp.stack([lo, flo, fhi, hi], axis=1).astype(jnp.int32)


def _dot(a, b, cfg, *, trans_a=False, trans_b=False):
    """float32-accumulating tile product. float32 tiles use exact fp32 dots, or three TF32 passes
    when cfg.tf32x3 (as accurate and faster: docs/performance.md); bfloat16 tiles ignore both."""
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    precision = lax.Precision.HIGHEST
    if cfg.tf32x3 and a.dtype == jnp.float32 and not cfg.interpret:  # the CPU interpreter lacks the algorithm
        precision = lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _rows(ref, rows, rope, cfg) -> tuple:
    """ref[rows] as the parts whose products with another tile's parts sum to their product: the whole
    tile, or with RoPE (cfg.rope) its two rotated halves, x1·cos - x2·sin and x2·cos + x1·sin, in
    float32 and then in the input dtype, as the XLA path rounds them. `rope`: (cos_ref, sin_ref) over the
    same rows, (rows, H / 2) float32."""
    if not cfg.rope:
        return (ref[rows, :],)
    half = ref.shape[-1] // 2
    x1, x2 = (ref[rows, pl.ds(i * half, half)].astype(jnp.float32) for i in (0, 1))
    cos, sin = rope[0][rows, :], rope[1][rows, :]
    return (x1 * cos - x2 * sin).astype(ref.dtype), (x2 * cos + x1 * sin).astype(ref.dtype)


def _store_grad(ref, parts, rope, scale):
    """Writes a gradient accumulated against rotated tiles (`parts` as `_rows` gives them) as the gradient
    of the unrotated input: the transposed rotation, d1·cos + d2·sin and d2·cos - d1·sin."""
    if len(parts) == 1:
        ref[...] = (parts[0] * scale).astype(ref.dtype)
        return
    (d1, d2), half = parts, ref.shape[-1] // 2
    cos, sin = rope[0][...], rope[1][...]
    ref[:, pl.ds(0, half)] = ((d1 * cos + d2 * sin) * scale).astype(ref.dtype)
    ref[:, pl.ds(half, half)] = ((d2 * cos - d1 * sin) * scale).astype(ref.dtype)


def _logits(q_parts, k_parts, seg_q, seg_k, start_q, start_k, masked, cfg):
    """Base-2 logits of a (queries, keys) tile, masked unless the tile is known to be full."""
    s = sum(_dot(q, k, cfg, trans_b=True) for q, k in zip(q_parts, k_parts)) * (cfg.scale * _LOG2E)
    if not masked:
        return s
    visible = (seg_q[:, None] == seg_k[None, :]) & (seg_k[None, :] != 0)
    if cfg.window is not None:
        d = (start_q - start_k) + (jnp.arange(s.shape[0], dtype=jnp.int32)[:, None]
                                   - jnp.arange(s.shape[1], dtype=jnp.int32)[None, :])
        visible &= (d <= cfg.window) & (d >= -cfg.window)
    return jnp.where(visible, s, _MASKED)


def _sweep(ranges_ref, step, carry):
    """Runs step(j, carry, masked) over the visible tiles: masked edges, mask-free middle.

    The mask costs about as much vector work as the softmax; three static loops rather than a
    per-tile branch keep each loop free of control flow for Triton's pipelining.
    """
    lo, flo, fhi, hi = (ranges_ref[i] for i in range(4))
    for a, b, masked in ((lo, flo, True), (flo, fhi, False), (fhi, hi, True)):
        carry = lax.fori_loop(a, b, functools.partial(step, masked=masked), carry)
    return carry


def _split_rope(refs, inputs: int, cfg):
    """(the kernel's inputs, ((cos, sin) of the held tile, (cos, sin) of the streamed rows) or Nones, outputs)."""
    if not cfg.rope:
        return refs[:inputs], (None, None), refs[inputs:]
    return refs[:inputs], (refs[inputs:inputs + 2], refs[inputs + 2:inputs + 4]), refs[inputs + 4:]


def _fwd_kernel(*refs, cfg):
    (ranges_ref, seg_ref, q_ref, k_ref, v_ref), (rope_q, rope_k), (o_ref, lse_ref) = _split_rope(refs, 5, cfg)
    bq, bk = cfg.block_q, cfg.block_k
    start_q = pl.program_id(0) * bq
    q = _rows(q_ref, slice(None), rope_q, cfg)
    seg_q = seg_ref[pl.ds(start_q, bq)]

    def step(j, carry, masked):
        acc, m, l = carry
        ks = pl.ds(j * bk, bk)
        s = _logits(q, _rows(k_ref, ks, rope_k, cfg), seg_q, seg_ref[ks], start_q, j * bk, masked, cfg)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(s - m_new[:, None])
        v = v_ref[ks, :]
        return alpha[:, None] * acc + _dot(p.astype(v.dtype), v, cfg), m_new, alpha * l + jnp.sum(p, axis=1)

    init = (jnp.zeros((bq, v_ref.shape[-1]), jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, l = _sweep(ranges_ref, step, init)
    real = seg_q != 0  # a real query always sees itself, so l > 0 on every row this keeps
    o_ref[...] = jnp.where(real[:, None], acc / l[:, None], 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(real, m + jnp.log2(l), jnp.inf)


def _dq_kernel(*refs, cfg):
    (ranges_ref, seg_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), (rope_q, rope_k), (dq_ref,) = (
        _split_rope(refs, 8, cfg))
    bq, bk = cfg.block_q, cfg.block_k
    start_q = pl.program_id(0) * bq
    q, do = _rows(q_ref, slice(None), rope_q, cfg), do_ref[...]
    seg_q, lse, delta = seg_ref[pl.ds(start_q, bq)], lse_ref[...], delta_ref[...]

    def step(j, dq, masked):
        ks = pl.ds(j * bk, bk)
        k = _rows(k_ref, ks, rope_k, cfg)
        p = jnp.exp2(_logits(q, k, seg_q, seg_ref[ks], start_q, j * bk, masked, cfg) - lse[:, None])
        ds = (p * (_dot(do, v_ref[ks, :], cfg, trans_b=True) - delta[:, None])).astype(k_ref.dtype)
        return tuple(d + _dot(ds, part, cfg) for d, part in zip(dq, k))

    dq = _sweep(ranges_ref, step, tuple(jnp.zeros(part.shape, jnp.float32) for part in q))
    _store_grad(dq_ref, dq, rope_q, cfg.scale)


def _dkv_kernel(*refs, cfg):
    (ranges_ref, seg_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), (rope_k, rope_q), (dk_ref, dv_ref) = (
        _split_rope(refs, 8, cfg))
    bkeys, bqueries = cfg.block_q, cfg.block_k  # transposed tiling: hold keys, stream queries
    start_k = pl.program_id(0) * bkeys
    k, v = _rows(k_ref, slice(None), rope_k, cfg), v_ref[...]
    seg_k = seg_ref[pl.ds(start_k, bkeys)]

    def step(i, carry, masked):
        dk, dv = carry
        qs = pl.ds(i * bqueries, bqueries)
        q, do = _rows(q_ref, qs, rope_q, cfg), do_ref[qs, :]
        s = _logits(q, k, seg_ref[qs], seg_k, i * bqueries, start_k, masked, cfg)
        p = jnp.exp2(s - lse_ref[qs][:, None])
        dv = dv + _dot(p.astype(do.dtype), do, cfg, trans_a=True)
        ds = (p * (_dot(do, v, cfg, trans_b=True) - delta_ref[qs][:, None])).astype(q_ref.dtype)
        return tuple(d + _dot(ds, part, cfg, trans_a=True) for d, part in zip(dk, q)), dv

    dk, dv = _sweep(ranges_ref, step, (tuple(jnp.zeros(part.shape, jnp.float32) for part in k),
                                       jnp.zeros(v.shape, jnp.float32)))
    _store_grad(dk_ref, dk, rope_k, cfg.scale)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _call(kernel, cfg, shape, inputs, layouts, outputs):
    """Launches `kernel` on a (T // block_q, B, N) grid; program (t, b, n) holds row tile t of (b, n).

    layouts name each operand's block: 'ranges' the 4 tile bounds of this row tile, 'seg' the whole
    segment-id row, 'tile'/'rows' one tile or all rows of a (B, T, N, H) array, 'stat_tile'/
    'stat_rows' the same of a (B, N, T) row statistic, 'rope_tile'/'rope_rows' of a (B, T, H / 2) RoPE
    table. outputs pairs (ShapeDtypeStruct, layout).
    """
    B, T, N, H = shape
    bq = cfg.block_q
    specs = {
        "rope_tile": pl.BlockSpec((None, bq, H // 2), lambda t, b, n: (b, t, 0)),
        "rope_rows": pl.BlockSpec((None, T, H // 2), lambda t, b, n: (b, 0, 0)),
        "ranges": pl.BlockSpec((None, 4, None), lambda t, b, n: (b, 0, t)),
        "seg": pl.BlockSpec((None, T), lambda t, b, n: (b, 0)),
        "tile": pl.BlockSpec((None, bq, None, H), lambda t, b, n: (b, t, n, 0)),
        "rows": pl.BlockSpec((None, T, None, H), lambda t, b, n: (b, 0, n, 0)),
        "stat_tile": pl.BlockSpec((None, None, bq), lambda t, b, n: (b, n, t)),
        "stat_rows": pl.BlockSpec((None, None, T), lambda t, b, n: (b, n, 0)),
    }
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg),
        grid=(T // bq, B, N),
        in_specs=[specs[name] for name in layouts],
        out_specs=[specs[name] for _, name in outputs],
        out_shape=[s for s, _ in outputs],
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=cfg.interpret,
        name=kernel.__name__.strip("_"),
    )(*inputs)


def _rope_inputs(rope, cfg) -> tuple[tuple, tuple]:
    """The RoPE tables as the kernels' extra inputs, held tile's then streamed rows' (cos, sin), and their layouts."""
    if not cfg.rope:
        return (), ()
    return (*rope, *rope), ("rope_tile", "rope_tile", "rope_rows", "rope_rows")


def _forward(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, rope, cfg):
    B, T, N, _ = q_BTNH.shape
    ranges_B4Q = _tile_ranges(segment_ids_BT, cfg.block_q, cfg.block_k, cfg.window)
    rope_in, rope_layouts = _rope_inputs(rope, cfg)
    o_BTNH, lse_BNT = _call(
        _fwd_kernel, cfg, q_BTNH.shape,
        (ranges_B4Q, segment_ids_BT, q_BTNH, k_BTNH, v_BTNH, *rope_in),
        ("ranges", "seg", "tile", "rows", "rows", *rope_layouts),
        [(jax.ShapeDtypeStruct(q_BTNH.shape, q_BTNH.dtype), "tile"),
         (jax.ShapeDtypeStruct((B, N, T), jnp.float32), "stat_tile")])
    return o_BTNH, (ranges_B4Q, lse_BNT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, rope, cfg):
    return _forward(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, rope, cfg)[0]


def _attention_fwd(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, rope, cfg):
    o_BTNH, stats = _forward(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, rope, cfg)
    return o_BTNH, (q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, rope, o_BTNH, stats)


def _attention_bwd(cfg, residuals, do_BTNH):
    q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, rope, o_BTNH, (ranges_B4Q, lse_BNT) = residuals
    do_BTNH = do_BTNH.astype(q_BTNH.dtype)
    # delta = rowsum(dO * O) = sum_j P_ij dP_ij, the softmax-Jacobian term; one cheap XLA fusion.
    delta_BNT = jnp.einsum("btnh,btnh->bnt", o_BTNH.astype(jnp.float32), do_BTNH.astype(jnp.float32))
    common = (ranges_B4Q, segment_ids_BT, q_BTNH, k_BTNH, v_BTNH, do_BTNH, lse_BNT, delta_BNT)
    rope_in, rope_layouts = _rope_inputs(rope, cfg)
    (dq_BTNH,) = _call(
        _dq_kernel, cfg, q_BTNH.shape, (*common, *rope_in),
        ("ranges", "seg", "tile", "rows", "rows", "tile", "stat_tile", "stat_tile", *rope_layouts),
        [(jax.ShapeDtypeStruct(q_BTNH.shape, q_BTNH.dtype), "tile")])
    dk_BTNH, dv_BTNH = _call(
        _dkv_kernel, cfg, q_BTNH.shape, (*common, *rope_in),
        ("ranges", "seg", "rows", "tile", "tile", "rows", "stat_rows", "stat_rows", *rope_layouts),
        [(jax.ShapeDtypeStruct(k_BTNH.shape, k_BTNH.dtype), "tile"),
         (jax.ShapeDtypeStruct(v_BTNH.shape, v_BTNH.dtype), "tile")])
    no_rope_grad = None if rope is None else jax.tree.map(jnp.zeros_like, rope)  # positions are not trained
    return dq_BTNH, dk_BTNH, dv_BTNH, None, no_rope_grad


_attention.defvjp(_attention_fwd, _attention_bwd)


def pallas_attention(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, *, window: int | None, scale: float | None = None,
                     block_q: int | None = None, block_k: int | None = None, interpret: bool = False,
                     num_warps: int | None = None, num_stages: int = 2, tf32x3: bool = False, rope=None):
    """Fused attention, differentiable in q, k and v; same function as the XLA reference.

    q/k/v: (B, T, N, H) float32 or bfloat16, H a power of two (32/64/128); T any length
    (padded up to the tiles). Default tiles: 64x64 for 16-bit inputs, 32x32 for float32, whose
    tiles hold twice the registers (docs/performance.md has the sweep). segment_ids_BT: ints >= 0, 0 = padding
    (those queries return zeros). window: attend only where |i - j| <= window. interpret=True runs
    the kernels on CPU (tests). tf32x3: float32 dots as three TF32 passes (the model's fp32 policy
    on GPU, passed down from its config). rope: (cos, sin), (B, T, H / 2) float32 tables of each token's
    rotary angles: q and k are then unrotated, and each tile is rotated (rotate-half RoPE) as it is loaded,
    with the gradients rotated back before they are written, so no rotated copy of q and k is ever
    stored; the function is attention over the rotated q and k. Returns (B, T, N, H) in q's dtype.
    """
    B, T, N, H = q_BTNH.shape
    default_block = 32 if q_BTNH.dtype == jnp.float32 else 64
    block_q, block_k = block_q or default_block, block_k or default_block
    if k_BTNH.shape != q_BTNH.shape or v_BTNH.shape != q_BTNH.shape or segment_ids_BT.shape != (B, T):
        raise ValueError(f"shapes differ: q {q_BTNH.shape}, k {k_BTNH.shape}, v {v_BTNH.shape}, "
                         f"segment_ids {segment_ids_BT.shape}")
    for name, size in (("block_q", block_q), ("block_k", block_k), ("head_dim", H)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name}={size} must be a power of two >= 16 (Triton tiles)")
    # A length off the tiles (short evaluation buckets, odd seq_len) is padded with segment 0: padded keys
    # are invisible and padded queries return zeros, so slicing them off leaves the same function.
    pad = -T % max(block_q, block_k)
    if rope is not None:
        rope = tuple(jnp.asarray(table, jnp.float32) for table in rope)
        if len(rope) != 2 or any(table.shape != (B, T, H // 2) for table in rope):
            raise ValueError(f"rope must be (cos, sin) of shape {(B, T, H // 2)}, got "
                             f"{[getattr(t, 'shape', None) for t in rope]}")
    if pad:
        q_BTNH, k_BTNH, v_BTNH = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q_BTNH, k_BTNH, v_BTNH))
        segment_ids_BT = jnp.pad(segment_ids_BT, ((0, 0), (0, pad)))
        if rope is not None:
            rope = tuple(jnp.pad(table, ((0, 0), (0, pad), (0, 0))) for table in rope)
    if window is not None and window < 0:
        raise ValueError(f"window={window} must be >= 0")
    cfg = _Config(block_q=block_q, block_k=block_k, window=window,
                  scale=float(H ** -0.5 if scale is None else scale),
                  num_warps=num_warps or (4 if block_q * block_k <= 128 * 64 else 8),
                  num_stages=num_stages, interpret=interpret,
                  tf32x3=tf32x3, rope=rope is not None)
    return _attention(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT.astype(jnp.int32), rope, cfg)[:, :T]
