"""TPU attention through JAX's own splash-attention kernel (jax.experimental.pallas.ops.tpu).

Our flash kernel (attention_pallas) targets GPU; on TPU, splash is the maintained block-sparse
flash kernel: it skips the tiles that the window mask and the segment ids rule out, and has its
own backward kernels (custom VJP). This module adapts it to the shared attention contract:
(B, T, N, H) inputs, a scale, two-sided inclusive windows, and zeros at padding queries.

Splash works on one example (N, T, H) with no scale, so q is pre-scaled, made heads-major and the
kernel is vmapped over the batch. Its tiles must be multiples of 128 tokens (segment ids are laid
along TPU lanes), so T is padded up to a multiple of the block with segment id 0, which real
tokens never see. Splash lets padding tokens attend to each other, so padding queries are zeroed.
`interpret=True` runs the kernels on CPU (slowly), for tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

LANES = 128  # splash requires every block size to be a multiple of this


@functools.lru_cache(maxsize=None)
def _kernel(T: int, N: int, window: int | None, block: int, interpret: bool):
    """The kernel for one static shape and window. Building it processes the mask in numpy (at
    trace time, O(T^2 / block^2) per head), so it is built once per configuration."""
    if window is None:
        mask_TS = splash.FullMask((T, T))
    else:
        mask_TS = splash.LocalMask((T, T), window_size=(window, window), offset=0)
    blocks = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )
    # Build outside any trace: the kernel holds the mask tables as concrete arrays and is cached.
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha_single_device(
            splash.MultiHeadMask([mask_TS] * N), block_sizes=blocks, interpret=interpret)


def splash_attention(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, *, window, scale, interpret=False,
                     block: int = LANES):
    """Softmax attention with attention.py's contract, computed by the splash kernel.

    window: half-width of a two-sided inclusive local window, or None for full attention.
    block: tile size for every forward and backward tile, a multiple of 128; T is padded to it.
    """
    if block % LANES:
        raise ValueError(f"splash block size must be a multiple of {LANES}, got {block}")
    B, T, N, H = q_BTNH.shape
    T_pad = -(-T // block) * block
    kernel = _kernel(T_pad, N, None if window is None else int(window), block, bool(interpret))

    def heads_major(x_BTNH):  # (B, T, N, H) -> (B, N, T_pad, H), zeros in the padded tail
        return jnp.pad(x_BTNH, ((0, 0), (0, T_pad - T), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    q_BNTH = heads_major(q_BTNH * jnp.asarray(scale, q_BTNH.dtype))
    k_BNTH, v_BNTH = heads_major(k_BTNH), heads_major(v_BTNH)
    seg_BT = jnp.pad(segment_ids_BT.astype(jnp.int32), ((0, 0), (0, T_pad - T)))

    def one_example(q_NTH, k_NTH, v_NTH, seg_T):
        return kernel(q_NTH, k_NTH, v_NTH, segment_ids=splash.SegmentIds(q=seg_T, kv=seg_T))

    out_BNTH = jax.vmap(one_example)(q_BNTH, k_BNTH, v_BNTH, seg_BT)
    out_BTNH = out_BNTH.transpose(0, 2, 1, 3)[:, :T]
    return jnp.where((segment_ids_BT != 0)[:, :, None, None], out_BTNH, 0).astype(q_BTNH.dtype)
