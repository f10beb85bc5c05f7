"""The Pallas flash-attention kernel (interpret mode on CPU) against a plain-jnp softmax attention;
at the end, JAX's splash kernel (the TPU backend, also interpreted) against the XLA backend.

Shapes are small because interpret mode is slow; tiles (32/64, unequal) are small enough that every
tile path (partial tiles, segment boundaries inside tiles, skipped and mask-free tiles) is exercised.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neobert_jax.config import ModernBertConfig
from neobert_jax.model import ModernBertForMaskedLM
from neobert_jax.model.attention import apply_rope, rope_cos_sin, xla_attention
from neobert_jax.model.attention_pallas import _tile_ranges, pallas_attention
from neobert_jax.model.attention_splash import splash_attention

FP32_ATOL = 1e-5  # outputs and dq/dk/dv; measured max abs error ~1e-6
BF16_ATOL = {"o": 1e-2, "grad": 3e-2}  # bf16 inputs vs float32 math on the same values; measured <= 1.2e-2
SPLASH_ATOL = 5e-6  # splash vs xla_attention in float32, outputs and dq/dk/dv; measured max abs error <= 1.1e-6


def _segments(rows, T):
    """(B, T) int32 ids from per-row document lengths; the rest of each row is padding (0)."""
    seg_BT = np.zeros((len(rows), T), np.int32)
    for b, lengths in enumerate(rows):
        np.put(seg_BT[b], np.arange(sum(lengths)), np.repeat(np.arange(1, len(lengths) + 1), lengths))
    return jnp.asarray(seg_BT)


def _reference(q_BTNH, k_BTNH, v_BTNH, seg_BT, window):
    q, k, v = (x.astype(jnp.float32) for x in (q_BTNH, k_BTNH, v_BTNH))
    logits = jnp.einsum("bqnh,bknh->bnqk", q, k, precision="highest") * q.shape[-1] ** -0.5
    visible = (seg_BT[:, :, None] == seg_BT[:, None, :]) & (seg_BT[:, None, :] != 0)
    if window is not None:
        i = jnp.arange(seg_BT.shape[1])
        visible &= jnp.abs(i[:, None] - i[None, :]) <= window
    probs = jax.nn.softmax(jnp.where(visible[:, None], logits, -1e30), axis=-1)
    o = jnp.einsum("bnqk,bknh->bqnh", probs, v, precision="highest")
    return jnp.where((seg_BT != 0)[:, :, None, None], o, 0.0)


def _inputs(shape, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    return [jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys]


def _out_and_grads(fn, q, k, v, w):
    """Output and d/d(q, k, v) of sum(out * w): a random linear functional of the output."""
    out = fn(q, k, v)
    grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w), argnums=(0, 1, 2))(q, k, v)
    return out, grads


@pytest.mark.parametrize(
    "T, window, block_q, block_k, rows",
    [
        # boundaries inside 32/64 tiles, padding tails; row 1's tail covers whole tiles 128..255
        (256, None, 64, 32, [[37, 90, 64, 41], [100, 20]]),
        # eight windows long; documents longer than the window; row 1 unpacked, no padding
        (512, 64, 32, 64, [[300, 150], [512]]),
    ],
)
def test_float32_matches_reference(T, window, block_q, block_k, rows):
    seg_BT = _segments(rows, T)
    q, k, v, w = _inputs((2, T, 2, 64), jnp.float32)
    # Poison the all-padding tiles of the kernel's inputs: skipped tiles must never be read.
    pad_tiles_BT = jnp.repeat(jnp.all(seg_BT.reshape(2, -1, 64) == 0, -1), 64, axis=1)[:, :, None, None]
    poisoned = [jnp.where(pad_tiles_BT, jnp.nan, x) for x in (q, k, v)]
    kernel = lambda q, k, v: pallas_attention(q, k, v, seg_BT, window=window, block_q=block_q,
                                              block_k=block_k, interpret=True)
    out, grads = _out_and_grads(kernel, *poisoned, w)
    ref_out, ref_grads = _out_and_grads(lambda q, k, v: _reference(q, k, v, seg_BT, window), q, k, v, w)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref_out, atol=FP32_ATOL, rtol=0)
    for name, g, ref_g in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(g, ref_g, atol=FP32_ATOL, rtol=0, err_msg=f"d{name}")


def test_bfloat16_matches_reference():
    T, window = 256, 32
    seg_BT = _segments([[37, 90, 64, 41], [150]], T)
    q, k, v, w = _inputs((2, T, 2, 64), jnp.bfloat16, seed=1)
    kernel = lambda q, k, v: pallas_attention(q, k, v, seg_BT, window=window, block_q=64, block_k=64,
                                              interpret=True)
    out, grads = _out_and_grads(kernel, q, k, v, w.astype(jnp.float32))
    ref_out, ref_grads = _out_and_grads(lambda q, k, v: _reference(q, k, v, seg_BT, window),
                                        *(x.astype(jnp.float32) for x in (q, k, v)), w.astype(jnp.float32))
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(out.astype(jnp.float32), ref_out, atol=BF16_ATOL["o"], rtol=0)
    for name, g, ref_g in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(g.astype(jnp.float32), ref_g, atol=BF16_ATOL["grad"], rtol=0, err_msg=f"d{name}")
    assert float(jnp.max(jnp.abs(out[1, 150:].astype(jnp.float32)))) == 0.0  # padding queries


@pytest.mark.parametrize("H", [32, 128])
def test_other_head_dims(H):
    T = 128
    seg_BT = _segments([[50, 60]], T)
    q, k, v, w = _inputs((1, T, 1, H), jnp.float32, seed=H)
    kernel = lambda q, k, v: pallas_attention(q, k, v, seg_BT, window=None, scale=0.1, block_q=32, block_k=32,
                                              interpret=True)
    out, grads = _out_and_grads(kernel, q, k, v, w)
    scaled = lambda q, k, v: _reference(q * (0.1 * H**0.5), k, v, seg_BT, None)  # reference uses H**-0.5
    ref_out, ref_grads = _out_and_grads(scaled, q, k, v, w)
    np.testing.assert_allclose(out, ref_out, atol=FP32_ATOL, rtol=0)
    for name, g, ref_g in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(g, ref_g, atol=FP32_ATOL, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("dtype, window, block_q, block_k", [(jnp.float32, None, 32, 64), (jnp.bfloat16, 16, 64, 32)])
def test_rope_in_the_kernel_equals_attention_over_rotated_q_and_k(dtype, window, block_q, block_k):
    """rope=(cos, sin): tiles rotated as they load, gradients rotated back before they are written; the
    outputs and d(q, k, v) of attention over q and k rotated by the model's apply_rope (float32 math).
    Packed rows restart their positions at each document, so each token's angle is its own."""
    T, H = 128, 64
    seg_BT = _segments([[50, 40], [128]], T)
    positions_BT = jnp.asarray(np.stack([np.r_[np.arange(50), np.arange(40), np.zeros(38)], np.arange(128)]),
                               jnp.int32)
    cos, sin = rope_cos_sin(positions_BT, H, 10000.0)
    q, k, v, w = _inputs((2, T, 1, H), dtype, seed=3)
    in_kernel = lambda q, k, v: pallas_attention(q, k, v, seg_BT, window=window, block_q=block_q, block_k=block_k,
                                                 interpret=True, rope=(cos[:, :, 0, :H // 2], sin[:, :, 0, :H // 2]))
    rotated_first = lambda q, k, v: _reference(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, seg_BT, window)
    out, grads = _out_and_grads(in_kernel, q, k, v, w.astype(jnp.float32))
    ref_out, ref_grads = _out_and_grads(rotated_first, *(x.astype(jnp.float32) for x in (q, k, v)),
                                        w.astype(jnp.float32))
    atol = (FP32_ATOL, FP32_ATOL) if dtype == jnp.float32 else (BF16_ATOL["o"], BF16_ATOL["grad"])
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    np.testing.assert_allclose(out.astype(jnp.float32), ref_out, atol=atol[0], rtol=0)
    for name, g, ref_g in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(g.astype(jnp.float32), ref_g, atol=atol[1], rtol=0, err_msg=f"d{name}")
    unrotated = _reference(*(x.astype(jnp.float32) for x in (q, k, v)), seg_BT, window)
    assert float(jnp.max(jnp.abs(unrotated - out.astype(jnp.float32)))) > 10 * atol[0]


def test_tile_ranges_skip_invisible_tiles():
    """Rows are [lo, flo, fhi, hi]: visible tiles [lo, hi), mask-free full tiles [flo, fhi)."""
    T = 512
    # Unpacked row, window 64, 64-row tiles: neighbours only; the diagonal tile (|i - j| <= 63) is full.
    ranges = _tile_ranges(_segments([[T]], T), 64, 64, window=64)[0]
    i = np.arange(8)
    np.testing.assert_array_equal(ranges, [np.maximum(i - 1, 0), i, i + 1, np.minimum(i + 2, 8)])
    # Packed 128 + 128 + 200, 56 padding; 128-row query tiles, 64-row key tiles, no window.
    ranges = _tile_ranges(_segments([[128, 128, 200]], T), 128, 64, window=None)[0]
    np.testing.assert_array_equal(ranges, [[0, 2, 4, 4], [0, 2, 4, 8], [2, 4, 7, 8], [2, 4, 8, 8]])
    # An all-padding tile sees nothing, and no tile sees it.
    ranges = _tile_ranges(_segments([[100]], T), 64, 64, window=None)[0]
    np.testing.assert_array_equal(ranges, [[0, 0] + [0] * 6, [0, 2] + [0] * 6, [1, 2] + [0] * 6, [2, 2] + [0] * 6])


@pytest.mark.parametrize("T, window, rows", [(16, None, [[5, 7], [16]]), (200, 32, [[37, 120], [90]])])
def test_lengths_off_the_tiles_are_padded(T, window, rows):
    """Evaluation buckets (16 tokens) and odd lengths run: padded up to the tiles, sliced back."""
    seg_BT = _segments(rows, T)
    q, k, v, w = _inputs((2, T, 2, 64), jnp.float32, seed=T)
    kernel = lambda q, k, v: pallas_attention(q, k, v, seg_BT, window=window, block_q=64, block_k=32,
                                              interpret=True)
    out, grads = _out_and_grads(kernel, q, k, v, w)
    ref_out, ref_grads = _out_and_grads(lambda q, k, v: _reference(q, k, v, seg_BT, window), q, k, v, w)
    assert out.shape == (2, T, 2, 64)
    np.testing.assert_allclose(out, ref_out, atol=FP32_ATOL, rtol=0)
    for name, g, ref_g in zip("qkv", grads, ref_grads):
        assert g.shape == (2, T, 2, 64)
        np.testing.assert_allclose(g, ref_g, atol=FP32_ATOL, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("T, H, block_q", [(256, 48, 64), (256, 64, 96)])
def test_rejects_unsupported_shapes(T, H, block_q):
    x = jnp.zeros((1, T, 1, H))
    with pytest.raises(ValueError):
        pallas_attention(x, x, x, jnp.ones((1, T), jnp.int32), window=None, block_q=block_q, block_k=64,
                         interpret=True)


# JAX's splash kernel (the TPU backend, attention_splash), interpreted on CPU, against xla_attention.
# Its tiles are 128 tokens, so T = 100 and 200 exercise the padding of T up to a block multiple.


@pytest.mark.parametrize(
    "T, window, rows",
    [
        (128, None, [[37, 20, 41], [50, 60, 18]]),  # packed rows, several documents, padding at the end
        (100, 16, [[70, 30], [60]]),  # several windows long, T not a block multiple (padded to 128)
        (200, None, [[150], [60, 90]]),  # full attention with padding; two 128-token blocks after padding
    ],
)
def test_splash_matches_xla(T, window, rows):
    seg_BT = _segments(rows, T)
    q, k, v, w = _inputs((2, T, 2, 32), jnp.float32, seed=T)
    splash = lambda q, k, v: splash_attention(q, k, v, seg_BT, window=window, scale=0.2, interpret=True)
    xla = lambda q, k, v: xla_attention(q, k, v, seg_BT, window=window, scale=0.2)
    out, grads = _out_and_grads(splash, q, k, v, w)
    ref_out, ref_grads = _out_and_grads(xla, q, k, v, w)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref_out, atol=SPLASH_ATOL, rtol=0)
    for name, g, ref_g in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(g, ref_g, atol=SPLASH_ATOL, rtol=0, err_msg=f"d{name}")


def test_splash_backend_runs_the_model():
    base = ModernBertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=2, local_attention=8, pad_token_id=3)  # a global and a local layer
    ids = np.random.RandomState(0).randint(5, 64, (1, 60)).astype(np.int32)
    seg = np.repeat([[1, 2, 0]], 20, axis=1).astype(np.int32)  # two documents and padding
    pos = np.tile(np.arange(20), 3)[None].astype(np.int32)

    def value_and_grads(implementation):
        graphdef, state = nnx.split(ModernBertForMaskedLM(base.replace(attn_implementation=implementation),
                                                          rngs=nnx.Rngs(0)))
        loss = lambda state: (nnx.merge(graphdef, state)(ids, segment_ids_BT=seg, positions_BT=pos)[0, :40] ** 2).mean()
        return jax.jit(jax.value_and_grad(loss))(state)

    (v_ref, g_ref), (v, g) = value_and_grads("xla"), value_and_grads("splash")
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, g_ref)


@pytest.mark.parametrize("architecture", ["modernbert", "neobert"])
def test_model_with_rope_in_the_kernel_equals_the_xla_model(architecture):
    """model.rope_in_kernel reaches the kernel through the model config (runtime_policy), and the model's
    loss and gradients stay those of the XLA path, for both families (packed rows, padding)."""
    from neobert_jax.mlm.config import default_config
    from neobert_jax.runtime.model_init import architecture as family, runtime_policy

    config = default_config()
    config.model.rope_in_kernel, config.model.attn_implementation = True, "pallas"
    runtime = runtime_policy(config, None)
    assert runtime["rope_in_kernel"] is True
    arch = family(architecture)
    base = arch.config_class(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, pad_token_id=3)
    ids = np.random.RandomState(0).randint(5, 64, (1, 96)).astype(np.int32)
    seg = np.repeat([[1, 2, 0]], 32, axis=1).astype(np.int32)
    pos = np.tile(np.arange(32), 3)[None].astype(np.int32)

    def kernel_inputs(jaxpr) -> list[int]:
        """The input count of every pallas_call in `jaxpr` and the jaxprs inside it."""
        counts = []
        for eqn in jaxpr.eqns:
            counts += [len(eqn.invars)] if eqn.primitive.name == "pallas_call" else []
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    counts += kernel_inputs(inner)
        return counts

    def value_and_grads(**fields):
        graphdef, state = nnx.split(arch.model_class(base.replace(**fields), rngs=nnx.Rngs(0)))
        loss = lambda state: (nnx.merge(graphdef, state)(ids, segment_ids_BT=seg, positions_BT=pos)[0, :64] ** 2).mean()
        return jax.jit(jax.value_and_grad(loss))(state), kernel_inputs(jax.make_jaxpr(loss)(state).jaxpr)

    (v_ref, g_ref), _ = value_and_grads(attn_implementation="xla", rope_in_kernel=True)  # XLA rotates first
    (v, g), calls = value_and_grads(attn_implementation="pallas", rope_in_kernel=runtime["rope_in_kernel"])
    assert calls == [5 + 4, 5 + 4]  # each layer's forward kernel takes the RoPE tables (tile's and rows')
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, g_ref)


def test_kernels_get_the_mesh_from_the_model_not_from_the_context():
    """The run's mesh reaches the kernels as an argument: setup -> runtime_policy -> ModernBertConfig.mesh ->
    the modules -> attention(mesh=) / per_batch_shard(fn, mesh); no module reads an ambient mesh."""
    import pathlib
    import re

    from neobert_jax.mlm.config import default_config
    from neobert_jax.model.shards import batch_axes, per_batch_shard
    from neobert_jax.runtime import sharding
    from neobert_jax.runtime.model_init import runtime_policy

    def fn(x):
        return (x,)

    mesh = sharding.make_mesh(default_config().mesh, devices=jax.devices()[:1])
    assert batch_axes(None) == () and batch_axes(mesh) == ()  # one batch shard: the kernel runs as is
    assert per_batch_shard(fn, None, ("rows",), ("rows",)) is fn
    runtime = runtime_policy(default_config(), mesh)
    assert runtime["mesh"] is mesh
    model = ModernBertForMaskedLM(ModernBertConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                                   num_hidden_layers=1, num_attention_heads=2, **runtime),
                                  rngs=nnx.Rngs(0))
    assert model.model.layers[0].attn.mesh is mesh and model.model.final_norm.mesh is mesh
    assert "mesh" not in model.config.to_hf_dict()
    package = pathlib.Path(__file__).resolve().parents[1] / "neobert_jax"
    ambient = [str(p.relative_to(package)) for p in package.rglob("*.py")
               if re.search(r"get_abstract_mesh|use_abstract_mesh|set_mesh|use_mesh", p.read_text())]
    assert ambient == []
