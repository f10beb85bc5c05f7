"""One attention entry point with an `implementation` switch.

Every backend computes the same function: token i attends to token j iff both belong to the
same document (segment id, 0 = padding) and, on local layers, |i - j| <= window. Padding
queries return zeros. `xla` is the reference; the faster kernels, by name:
`pallas` (our flash kernel, GPU), `cudnn` (GPU), `splash` (JAX's splash kernel, TPU), and `auto`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from neobert_jax.model.shards import per_batch_shard

_MASKED = -1e30  # finite, so a fully masked row gives uniform weights rather than NaN


def rope_cos_sin(positions_BT, head_dim: int, theta: float):
    """Non-interleaved (rotate-half) RoPE tables in float32, shaped (B, T, 1, H)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs_BTh = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    emb_BTH = jnp.concatenate([freqs_BTh, freqs_BTh], axis=-1)[:, :, None, :]
    return jnp.cos(emb_BTH), jnp.sin(emb_BTH)


def apply_rope(x_BTNH, cos, sin):
    x32 = x_BTNH.astype(jnp.float32)
    half = x32.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x_BTNH.dtype)


def xla_attention(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, *, window, scale, tf32x3=False, mesh=None,
                  dropout_rate=0.0, dropout_rng=None):
    """Reference: explicit (B, N, T, T) logits, softmax in float32."""
    logits_BNTS = jnp.einsum("btnh,bsnh->bnts", q_BTNH, k_BTNH, preferred_element_type=jnp.float32) * scale
    seg_q_BT1 = segment_ids_BT[:, :, None]
    seg_k_B1S = segment_ids_BT[:, None, :]
    visible_BTS = (seg_q_BT1 == seg_k_B1S) & (seg_k_B1S != 0)
    if window is not None:
        t = jnp.arange(segment_ids_BT.shape[1])
        visible_BTS &= (jnp.abs(t[:, None] - t[None, :]) <= window)[None]
    logits_BNTS = jnp.where(visible_BTS[:, None], logits_BNTS, _MASKED)
    probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BNTS.shape)
        probs_BNTS = jnp.where(keep, probs_BNTS / (1.0 - dropout_rate), 0.0)
    out_BTNH = jnp.einsum("bnts,bsnh->btnh", probs_BNTS.astype(v_BTNH.dtype), v_BTNH)
    return jnp.where((segment_ids_BT != 0)[:, :, None, None], out_BTNH, 0).astype(q_BTNH.dtype)


def _per_device(kernel, mesh, *arrays):
    """A kernel backend on each device's rows when `mesh` splits the batch (model/shards.py says why)."""
    run = per_batch_shard(lambda *args: (kernel(*args),), mesh, ("rows",) * len(arrays), ("rows",))
    return run(*arrays)[0]


def _pallas_kernel(kernel, *arrays_BT, window, scale, mesh, **options):
    """A Pallas kernel per device over its (batch-leading) arrays, interpreted on CPU so that it is
    testable anywhere."""
    interpret = jax.default_backend() == "cpu"
    return _per_device(lambda *args: kernel(*args, window=window, scale=scale, interpret=interpret, **options),
                       mesh, *arrays_BT)


def pallas_backend(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, *, window, scale, tf32x3=False, mesh=None,
                   dropout_rate=0.0, dropout_rng=None, rope=None):
    """Our flash kernel (attention_pallas); tf32x3: its float32 dots as three TF32 passes; rope: (cos, sin)
    of rope_cos_sin, applied to the unrotated q and k inside the kernel."""
    from neobert_jax.model.attention_pallas import pallas_attention

    half = q_BTNH.shape[-1] // 2  # rotate-half tables repeat their first half
    tables = () if rope is None else (rope[0][:, :, 0, :half], rope[1][:, :, 0, :half])

    def kernel(q, k, v, seg, *cos_sin, **options):
        return pallas_attention(q, k, v, seg, rope=cos_sin or None, **options)

    return _pallas_kernel(kernel, q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, *tables, window=window, scale=scale,
                          mesh=mesh, tf32x3=tf32x3)


def cudnn_backend(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, *, window, scale, tf32x3=False, mesh=None,
                  dropout_rate=0.0, dropout_rng=None):
    """cuDNN fused attention for global layers of unpacked rows (one document, padding at the end).

    cuDNN takes sequence lengths but neither segment ids nor a two-sided window, so local layers,
    and any batch that turns out to hold packed rows, run the Pallas kernel instead (a runtime
    branch: a packed batch can never get silently wrong results).
    """
    if window is not None:
        return pallas_backend(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, window=window, scale=scale, tf32x3=tf32x3,
                              mesh=mesh)

    def fused(q, k, v, seg):
        lengths_B = jnp.sum(seg != 0, axis=1).astype(jnp.int32)
        out = jax.nn.dot_product_attention(q, k, v, scale=scale, query_seq_lengths=lengths_B,
                                           key_value_seq_lengths=lengths_B, implementation="cudnn")
        return jnp.where((seg != 0)[:, :, None, None], out, 0).astype(q.dtype)

    def flash(q, k, v, seg):  # already on this device's rows: no mesh
        return pallas_backend(q, k, v, seg, window=None, scale=scale, tf32x3=tf32x3)

    def branch(q, k, v, seg):
        return jax.lax.cond(jnp.all(seg <= 1), fused, flash, q, k, v, seg)

    return _per_device(branch, mesh, q_BTNH, k_BTNH, v_BTNH, segment_ids_BT)


def splash_backend(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, *, window, scale, tf32x3=False, mesh=None,
                   dropout_rate=0.0, dropout_rng=None):
    """JAX's TPU splash-attention kernel (attention_splash)."""
    from neobert_jax.model.attention_splash import splash_attention

    return _pallas_kernel(splash_attention, q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, window=window, scale=scale,
                          mesh=mesh)


def choose_backend(platform: str, float32: bool, local: bool, *, tf32x3: bool, per_device: bool) -> str:
    """`auto`'s choice, the fastest correct one measured (docs/performance.md), as a plain function.

    GPU: the Pallas kernel for 16-bit inputs. For float32 it pays only on local layers and only
    with 3-pass TF32 dots (`tf32x3`, the fp32 training policy on GPU); XLA is faster on float32
    global layers. TPU: the splash kernel when it can run per device (`per_device`: one device, or
    a model given the run's mesh, over which model/shards.py wraps it in a shard_map); Mosaic kernels
    cannot be partitioned automatically, so a multi-device model without a mesh keeps XLA. Elsewhere: XLA.
    """
    if platform == "tpu":
        return "splash" if per_device else "xla"
    if platform == "gpu" and (not float32 or (local and tf32x3)):
        return "pallas"
    return "xla"


def runs_per_device(mesh) -> bool:
    """Whether a kernel sees one device's inputs: one device, or a mesh to shard_map over."""
    return mesh is not None or jax.device_count() == 1


def _resolve(implementation: str, q_BTNH, window, tf32x3: bool, mesh) -> str:
    """`auto` as `choose_backend` decides it from the trace's platform, dtype and window, and the model's
    tf32x3 and mesh; any other name as it is."""
    if implementation != "auto":
        return implementation
    return choose_backend(jax.default_backend(), q_BTNH.dtype == jnp.float32, window is not None, tf32x3=tf32x3,
                          per_device=runs_per_device(mesh))


def auto_backend(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, *, window, scale, tf32x3=False, mesh=None,
                 dropout_rate=0.0, dropout_rng=None):
    """The backend `_resolve` picks for these inputs."""
    return _BACKENDS[_resolve("auto", q_BTNH, window, tf32x3, mesh)](
        q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, window=window, scale=scale, tf32x3=tf32x3, mesh=mesh)


_BACKENDS: dict[str, Callable] = {  # neobert_jax.config.ATTENTION_BACKENDS names these for validation
    "xla": xla_attention, "pallas": pallas_backend, "cudnn": cudnn_backend, "splash": splash_backend,
    "auto": auto_backend,
}


def backends() -> list[str]:
    return sorted(_BACKENDS)


def attention(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, *, window: int | None, implementation: str = "xla",
              tf32x3: bool = False, mesh=None, dropout_rate: float = 0.0, dropout_rng=None, rope=None,
              rope_in_kernel: bool = False):
    """Scaled dot-product attention over (batch, seq, heads, head_dim) inputs.

    window: half-width of a two-sided local window (inclusive), or None for full attention.
    rope: (cos, sin) of rope_cos_sin: q and k are unrotated and attend rotated. The Pallas kernel rotates
    them as its tiles load when `rope_in_kernel` (no rotated copies in memory, no separate RoPE passes
    forward or backward); every other backend gets them rotated by apply_rope.
    tf32x3: the kernels' float32 dots as three TF32 passes (the model config's, from the run's precision).
    mesh: the run's device mesh (the model config's); the kernels run on each device's rows of it.
    Attention-probability dropout is only applied by backends that support it; the others
    fall back to `xla` when dropout is active so that training semantics never change silently.
    """
    scale = q_BTNH.shape[-1] ** -0.5
    if implementation not in _BACKENDS:
        raise ValueError(f"unknown attention implementation {implementation!r}; available: {backends()}")
    if dropout_rate > 0.0 and dropout_rng is not None:
        implementation = "xla"
    if rope is not None:
        if rope_in_kernel and _resolve(implementation, q_BTNH, window, tf32x3, mesh) == "pallas":
            return pallas_backend(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, window=window, scale=scale, tf32x3=tf32x3,
                                  mesh=mesh, rope=rope)
        q_BTNH, k_BTNH = apply_rope(q_BTNH, *rope), apply_rope(k_BTNH, *rope)
    return _BACKENDS[implementation](
        q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, window=window, scale=scale, tf32x3=tf32x3, mesh=mesh,
        dropout_rate=dropout_rate, dropout_rng=dropout_rng,
    )
