"""The GPU kernel paths, compiled (not interpreted) on a real GPU; skipped elsewhere.

Run on a GPU machine with `python -m pytest -m gpu tests` (docs/performance.md). CPU runs check
the same kernels in interpret mode (test_attention_pallas.py), which cannot reach what only the
GPU runs: the 3-pass-TF32 dots, the cuDNN backend, the `auto` dispatch and the Triton lowering.
References are the XLA backend computed with exact float32 dots.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neobert_jax.config import ModernBertConfig
from neobert_jax.model import ModernBertForMaskedLM, NeoBertForMaskedLM
from neobert_jax.model.attention import apply_rope, attention, cudnn_backend, rope_cos_sin, xla_attention
from neobert_jax.model.attention_pallas import pallas_attention
from neobert_jax.neobert_config import NeoBertConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")]

B, T, N, H = 2, 512, 4, 64
SCALE = H ** -0.5
FP32_ATOL = 2e-5  # exact and 3-pass-TF32 dots alike; single-pass TF32 misses it by far (test below)
BF16_ATOL = {"o": 1e-2, "grad": 3e-2}  # bf16 inputs against float32 math on the same values
LAYOUTS = {
    "packed": [[100, 200, 150], [37, 300, 175]],  # documents end inside tiles; row 0 ends in padding
    "unpacked": [[400], [512]],  # one document a row: what cuDNN takes
}


def _segments(rows):
    seg_BT = np.zeros((len(rows), T), np.int32)
    for b, lengths in enumerate(rows):
        seg_BT[b, :sum(lengths)] = np.repeat(np.arange(1, len(lengths) + 1), lengths)
    return jnp.asarray(seg_BT)


def _inputs(dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, w = (jax.random.normal(key, (B, T, N, H), jnp.float32) for key in keys)
    return (q.astype(dtype), k.astype(dtype), v.astype(dtype)), w


def _out_and_grads(fn, qkv, w, precision):
    """Output and d/d(q, k, v) of sum(out * w), traced under the float32 matmul `precision`."""
    loss = lambda *qkv: jnp.sum(fn(*qkv).astype(jnp.float32) * w)
    with jax.default_matmul_precision(precision):
        return jax.jit(fn)(*qkv), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*qkv)


def _reference(qkv, w, seg_BT, window):
    f32 = tuple(x.astype(jnp.float32) for x in qkv)
    fn = lambda q, k, v: xla_attention(q, k, v, seg_BT, window=window, scale=SCALE)
    return _out_and_grads(fn, f32, w, "highest")


def _max_errors(got, want):
    (o, grads), (o_ref, grads_ref) = got, want
    err = lambda a, b: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)))
    return err(o, o_ref), max(err(g, g_ref) for g, g_ref in zip(grads, grads_ref))


@pytest.mark.parametrize("window", [None, 64])
@pytest.mark.parametrize("tf32x3", [False, True])
def test_pallas_float32_exact_and_tf32x3(window, tf32x3):
    seg_BT = _segments(LAYOUTS["packed"])
    qkv, w = _inputs(jnp.float32)
    fn = lambda q, k, v: pallas_attention(q, k, v, seg_BT, window=window, scale=SCALE, tf32x3=tf32x3)
    errors = _max_errors(_out_and_grads(fn, qkv, w, "float32"), _reference(qkv, w, seg_BT, window))
    assert max(errors) < FP32_ATOL, errors


def test_single_pass_tf32_would_fail_the_float32_tolerance():
    """What the test above guards against: one TF32 pass per dot is ~100x off FP32_ATOL."""
    seg_BT = _segments(LAYOUTS["packed"])
    qkv, w = _inputs(jnp.float32)
    fn = lambda q, k, v: xla_attention(q, k, v, seg_BT, window=None, scale=SCALE)
    errors = _max_errors(_out_and_grads(fn, qkv, w, "tensorfloat32"), _reference(qkv, w, seg_BT, None))
    assert min(errors) > 10 * FP32_ATOL, errors


@pytest.mark.parametrize("window", [None, 64])
def test_pallas_bfloat16(window):
    seg_BT = _segments(LAYOUTS["packed"])
    qkv, w = _inputs(jnp.bfloat16)
    fn = lambda q, k, v: pallas_attention(q, k, v, seg_BT, window=window, scale=SCALE)
    o_err, grad_err = _max_errors(_out_and_grads(fn, qkv, w, "default"), _reference(qkv, w, seg_BT, window))
    assert o_err < BF16_ATOL["o"] and grad_err < BF16_ATOL["grad"], (o_err, grad_err)


@pytest.mark.parametrize("dtype, tf32x3, window", [(jnp.float32, True, 64), (jnp.float32, False, None),
                                                   (jnp.bfloat16, False, None), (jnp.bfloat16, False, 64)])
def test_pallas_rope_in_the_kernel(dtype, tf32x3, window):
    """RoPE applied as the tiles load (Triton: half-width loads and stores) against the XLA reference on q and
    k rotated first, in float32 math; per-document positions of packed rows."""
    rows = LAYOUTS["packed"]
    seg_BT = _segments(rows)
    positions_BT = jnp.asarray(np.stack([np.r_[tuple(np.arange(n) for n in lengths), np.zeros(T - sum(lengths))]
                                         for lengths in rows]), jnp.int32)
    cos, sin = rope_cos_sin(positions_BT, H, 10000.0)
    qkv, w = _inputs(dtype)
    fn = lambda q, k, v: pallas_attention(q, k, v, seg_BT, window=window, scale=SCALE, tf32x3=tf32x3,
                                          rope=(cos[:, :, 0, :H // 2], sin[:, :, 0, :H // 2]))
    rotated = lambda q, k, v: xla_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, seg_BT,
                                            window=window, scale=SCALE)
    reference = _out_and_grads(rotated, tuple(x.astype(jnp.float32) for x in qkv), w, "highest")
    errors = _max_errors(_out_and_grads(fn, qkv, w, "float32" if dtype == jnp.float32 else "default"), reference)
    limits = (FP32_ATOL, FP32_ATOL) if dtype == jnp.float32 else (BF16_ATOL["o"], BF16_ATOL["grad"])
    assert errors[0] < limits[0] and errors[1] < limits[1], errors


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("length", [16, 200])
def test_pallas_lengths_off_the_tiles(dtype, length):
    """Evaluation buckets (16 tokens) and odd lengths, padded to the tiles inside the kernel."""
    seg_BT = _segments([[5, 9], [length]])[:, :length]
    qkv, w = _inputs(dtype)
    qkv, w = tuple(x[:, :length] for x in qkv), w[:, :length]
    fn = lambda q, k, v: pallas_attention(q, k, v, seg_BT, window=None, scale=SCALE)
    errors = _max_errors(_out_and_grads(fn, qkv, w, "float32" if dtype == jnp.float32 else "default"),
                         _reference(qkv, w, seg_BT, None))
    limits = (FP32_ATOL, FP32_ATOL) if dtype == jnp.float32 else (BF16_ATOL["o"], BF16_ATOL["grad"])
    assert errors[0] < limits[0] and errors[1] < limits[1], errors


@pytest.mark.parametrize("layout", ["unpacked", "packed"])
@pytest.mark.parametrize("window", [None, 64])
def test_cudnn_backend(layout, window):
    """cuDNN on global layers of unpacked rows; packed rows and local layers must take the Pallas
    branch, so every layout gives the reference's values."""
    seg_BT = _segments(LAYOUTS[layout])
    qkv, w = _inputs(jnp.bfloat16)
    fn = lambda q, k, v: cudnn_backend(q, k, v, seg_BT, window=window, scale=SCALE)
    o_err, grad_err = _max_errors(_out_and_grads(fn, qkv, w, "default"), _reference(qkv, w, seg_BT, window))
    assert o_err < BF16_ATOL["o"] and grad_err < BF16_ATOL["grad"], (o_err, grad_err)


@pytest.mark.parametrize("dtype, window, precision, kernel", [
    (jnp.bfloat16, None, "default", True),
    (jnp.bfloat16, 64, "default", True),
    (jnp.float32, 64, "TF32_TF32_F32_X3", True),  # the fp32 training policy on GPU, local layer
    (jnp.float32, None, "TF32_TF32_F32_X3", False),  # XLA is faster on float32 global layers
    (jnp.float32, 64, "float32", False),  # exact fp32 dots: the kernel does not pay
])
def test_auto_dispatch(dtype, window, precision, kernel):
    """`auto` picks the Pallas (Triton) kernel exactly where docs/performance.md measured it faster."""
    seg_BT = _segments(LAYOUTS["packed"])
    qkv, w = _inputs(dtype)
    fn = lambda q, k, v: attention(q, k, v, seg_BT, window=window, implementation="auto",
                                   tf32x3=precision == "TF32_TF32_F32_X3")
    with jax.default_matmul_precision(precision):
        lowered = jax.jit(fn).lower(*qkv).as_text()
    assert bool(re.search(r"triton|mosaic_gpu", lowered)) == kernel
    o_err, grad_err = _max_errors(_out_and_grads(fn, qkv, w, precision), _reference(qkv, w, seg_BT, window))
    limits = (FP32_ATOL, FP32_ATOL) if dtype == jnp.float32 and precision != "default" else tuple(BF16_ATOL.values())
    assert o_err < limits[0] and grad_err < limits[1], (o_err, grad_err)


MODELS = {  # the model families and their configs' shared fields (NeoBERT: RMSNorm through LayerNorm's kernel)
    "modernbert": (ModernBertForMaskedLM, lambda **kw: ModernBertConfig(local_attention=128, **kw)),
    "neobert": (NeoBertForMaskedLM, NeoBertConfig),
}


@pytest.mark.parametrize("rope_in_kernel", [False, True])
@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("dtype, precision, rtol", [("bfloat16", "default", 2e-2), ("float32", "TF32_TF32_F32_X3", 1e-4)])
def test_model_with_gpu_kernels_matches_xla(dtype, precision, rtol, family, rope_in_kernel):
    """The whole MLM loss and its gradients with every kernel field on `auto` (attention, LayerNorm
    backward, log-sum-exp: all Pallas on GPU; RoPE inside the attention kernel or not) against every
    field on `xla`."""
    model_class, make_config = MODELS[family]
    base = make_config(vocab_size=512, hidden_size=128, intermediate_size=192, num_hidden_layers=3,
                       num_attention_heads=2, pad_token_id=3, dtype=dtype)
    rng = np.random.RandomState(0)
    seg_BT = _segments(LAYOUTS["packed"])
    ids_BT = jnp.asarray(rng.randint(5, 512, (B, T)), jnp.int32)
    pos_BT = jnp.asarray(np.concatenate([np.concatenate([np.arange(n) for n in row] + [np.zeros(T - sum(row), int)])[None]
                                         for row in LAYOUTS["packed"]]), jnp.int32)
    labels_BT = jnp.where((rng.rand(B, T) < 0.3) & (np.asarray(seg_BT) != 0), ids_BT, -100)

    def loss_and_grads(kernels):
        config = base.replace(attn_implementation=kernels, layer_norm_backward=kernels, logsumexp=kernels,
                              tf32x3=precision == "TF32_TF32_F32_X3", rope_in_kernel=rope_in_kernel)
        graphdef, state = nnx.split(model_class(config, rngs=nnx.Rngs(0)))
        loss = lambda state: nnx.merge(graphdef, state).mlm_nll(
            ids_BT, labels_BT, segment_ids_BT=seg_BT, positions_BT=pos_BT).sum() / jnp.sum(labels_BT >= 0)
        with jax.default_matmul_precision(precision):
            return jax.jit(jax.value_and_grad(loss))(state)

    (value, grads), (value_ref, grads_ref) = loss_and_grads("auto"), loss_and_grads("xla")
    np.testing.assert_allclose(value, value_ref, rtol=rtol)
    relative = jax.tree.map(lambda g, r: float(jnp.linalg.norm(g - r) / (jnp.linalg.norm(r) + 1e-12)), grads, grads_ref)
    worst = max(jax.tree.leaves(relative))
    assert worst < rtol * 5, worst


def test_tf32_split_products_are_float32_accurate_on_the_gpu():
    """model/tf32.py with real TF32 passes (not emulated): the product and both gradients' products
    within float32's accuracy of float64, at a weight gradient's long K."""
    from neobert_jax.model import tf32

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((8, 1024, 384), np.float32), rng.standard_normal((384, 768), np.float32) / 20
    g = rng.standard_normal((8, 1024, 768), np.float32)
    y, pull_back = jax.jit(lambda x, w: jax.vjp(tf32.matmul, x, w))(x, w)
    d_x, d_w = pull_back(g)
    x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
    for out, ref in ((y, x64 @ w64), (d_x, g64 @ w64.T), (d_w, x64.reshape(-1, 384).T @ g64.reshape(-1, 768))):
        assert np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref) < 1e-6


@pytest.mark.parametrize("family", sorted(MODELS))
def test_model_with_tf32_split_products_matches_xlas_algorithm(family):
    """model.tf32_split on the GPU: the fp32 MLM loss and gradients equal those of XLA's own 3-pass
    algorithm (the shipped fp32) within the fp32 model tolerance above."""
    model_class, make_config = MODELS[family]
    base = make_config(vocab_size=512, hidden_size=128, intermediate_size=192, num_hidden_layers=3,
                       num_attention_heads=2, pad_token_id=3, dtype="float32", tf32x3=True)
    rng = np.random.RandomState(1)
    ids_BT = jnp.asarray(rng.randint(5, 512, (B, T)), jnp.int32)
    labels_BT = jnp.where(rng.rand(B, T) < 0.3, ids_BT, -100)

    def loss_and_grads(split):
        graphdef, state = nnx.split(model_class(base.replace(tf32_split=split), rngs=nnx.Rngs(0)))
        loss = lambda state: nnx.merge(graphdef, state).mlm_nll(ids_BT, labels_BT).sum() / jnp.sum(labels_BT >= 0)
        with jax.default_matmul_precision("TF32_TF32_F32_X3"):
            return jax.jit(jax.value_and_grad(loss))(state)

    (value, grads), (value_ref, grads_ref) = loss_and_grads(True), loss_and_grads(False)
    np.testing.assert_allclose(value, value_ref, rtol=1e-4)
    relative = jax.tree.map(lambda g, r: float(jnp.linalg.norm(g - r) / (jnp.linalg.norm(r) + 1e-12)), grads, grads_ref)
    assert max(jax.tree.leaves(relative)) < 5e-4
