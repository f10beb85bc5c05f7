"""The Flax model computes what transformers' torch ModernBertForMaskedLM computes."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from neobert_jax.config import ModernBertConfig
from neobert_jax.hf import load_state_dict_into_model
from neobert_jax.model import ModernBertForMaskedLM


def converted(hf, **runtime):
    config = ModernBertConfig.from_hf_dict(hf.config.to_dict(), **runtime)
    model = ModernBertForMaskedLM(config, rngs=nnx.Rngs(1))
    newly, ignored = load_state_dict_into_model(model, {k: v.numpy() for k, v in hf.state_dict().items()})
    assert newly == [] and ignored == []
    return model


def torch_logits(hf, ids, mask):
    with torch.no_grad():
        return hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def random_batch(vocab, batch, seq, pad_from, seed=0):
    ids = np.random.RandomState(seed).randint(5, vocab, (batch, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    for row, start in enumerate(pad_from):
        mask[row, start:] = 0
        ids[row, start:] = 3
    return ids, mask


CONFIGS = {
    "default_layout": dict(),
    "biases_every_2nd_global": dict(hidden_size=48, num_attention_heads=3, intermediate_size=80, local_attention=8,
                                    global_attn_every_n_layers=2, norm_bias=True, attention_bias=True,
                                    mlp_bias=True, classifier_bias=True, num_hidden_layers=3),
    "v4_style_thetas": dict(num_hidden_layers=3, global_rope_theta=50000.0, local_rope_theta=500.0),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_torch_with_padding(name, hf_model):
    hf = hf_model(**CONFIGS[name])
    window = hf.config.local_attention
    seq = 3 * window + 12  # several local windows, so local layers really differ from global ones
    ids, mask = random_batch(hf.config.vocab_size, 3, seq, pad_from=[seq, seq - 17, 2 * window])
    ours = np.asarray(converted(hf)(ids, mask))
    diff = np.abs(ours - torch_logits(hf, ids, mask))[mask.astype(bool)]
    assert diff.max() <= 1e-4, diff.max()


def test_v4_and_v5_config_dicts_read_the_same(hf_model):
    v5 = hf_model(num_hidden_layers=3, global_rope_theta=50000.0, local_rope_theta=500.0).config.to_dict()
    v4 = {k: v for k, v in v5.items() if k not in ("layer_types", "rope_parameters")}
    v4.update(global_attn_every_n_layers=3, global_rope_theta=50000.0, local_rope_theta=500.0)
    a, b = ModernBertConfig.from_hf_dict(v5), ModernBertConfig.from_hf_dict(v4)
    assert a.layer_types == b.layer_types == ("full_attention", "sliding_attention", "sliding_attention")
    assert (a.global_rope_theta, a.local_rope_theta) == (b.global_rope_theta, b.local_rope_theta) == (50000.0, 500.0)


def test_student_shape_matches_torch(hf_model):
    hf = hf_model(vocab_size=50368, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                  intermediate_size=768, local_attention=128, pad_token_id=50283, bos_token_id=50281,
                  eos_token_id=50282, cls_token_id=50281, sep_token_id=50282)
    assert sum(p.numel() for p in hf.parameters()) == 37_243_840  # the 37.24M student
    ids, mask = random_batch(50368, 1, 3 * 128 + 16, pad_from=[3 * 128])
    ids[mask == 0] = 50283
    ours = np.asarray(converted(hf)(ids, mask))
    diff = np.abs(ours - torch_logits(hf, ids, mask))[mask.astype(bool)]
    assert diff.max() <= 1e-4, diff.max()


def test_packed_row_equals_documents_run_alone(hf_model):
    model = converted(hf_model())
    lengths = [20, 37, 5, 50]  # two documents longer than the 8-token half window
    docs = [np.random.RandomState(i).randint(5, 300, n).astype(np.int32) for i, n in enumerate(lengths)]
    seq = sum(lengths) + 8
    ids = np.full((1, seq), 3, np.int32)
    seg = np.zeros((1, seq), np.int32)
    pos = np.zeros((1, seq), np.int32)
    start = 0
    for i, doc in enumerate(docs):
        ids[0, start:start + len(doc)] = doc
        seg[0, start:start + len(doc)] = i + 1
        pos[0, start:start + len(doc)] = np.arange(len(doc))
        start += len(doc)
    packed = np.asarray(model(ids, segment_ids_BT=seg, positions_BT=pos))
    start = 0
    for doc in docs:
        alone = np.asarray(model(doc[None]))[0]
        np.testing.assert_allclose(packed[0, start:start + len(doc)], alone, atol=2e-5, rtol=0)
        start += len(doc)


def test_masked_only_head_equals_gathered_full_logits_and_bf16_is_close(hf_model):
    hf = hf_model()
    ids, mask = random_batch(300, 2, 56, pad_from=[56, 40])
    full = np.asarray(converted(hf)(ids, mask))
    positions = np.array([[0, 5, 55, 7], [1, 39, 2, 2]], np.int32)
    masked = np.asarray(converted(hf)(ids, mask, masked_positions_BM=positions))
    assert masked.shape == (2, 4, 300)
    np.testing.assert_allclose(masked, np.take_along_axis(full, positions[..., None], axis=1), atol=1e-6, rtol=0)
    bf16 = np.asarray(converted(hf, dtype="bfloat16")(ids, mask)).astype(np.float32)
    # bf16 keeps 8 mantissa bits; over 4 layers the logits stay within 2% of their range.
    err = np.abs(bf16 - full)[mask.astype(bool)].max() / np.abs(full).max()
    assert err < 0.02, err


def test_dropout_only_with_a_key_and_remat_keeps_gradients(hf_model):
    import jax

    hf = hf_model(num_hidden_layers=2)
    base = ModernBertConfig.from_hf_dict(hf.config.to_dict())
    ids, mask = random_batch(300, 2, 24, pad_from=[24, 20])

    def grads(config, key):
        model = ModernBertForMaskedLM(config, rngs=nnx.Rngs(7))
        graphdef, state = nnx.split(model)

        def loss(state):
            return nnx.merge(graphdef, state)(ids, mask, dropout_rng=key).astype("float32").mean()

        return jax.value_and_grad(loss)(state)

    dropout = base.replace(embedding_dropout=0.1, attention_dropout=0.1, mlp_dropout=0.1)
    plain, _ = grads(dropout, None)
    assert plain == grads(base, None)[0]  # no key: dropout is off
    assert grads(dropout, jax.random.key(0))[0] != plain
    (v1, g1), (v2, g2) = grads(base, None), grads(base.replace(remat="full"), None)
    assert v1 == v2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)


def test_pallas_backend_matches_xla_in_the_model_with_gradients(hf_model):
    import jax

    base = ModernBertConfig.from_hf_dict(hf_model(num_hidden_layers=2).config.to_dict())
    ids = np.random.RandomState(4).randint(5, 300, (1, 128)).astype(np.int32)
    seg = np.repeat([[1, 2, 3, 0]], 32, axis=1).astype(np.int32)  # packed row: 3 documents + padding
    pos = np.tile(np.arange(32), 4)[None].astype(np.int32)

    def value_and_grads(implementation):
        model = ModernBertForMaskedLM(base.replace(attn_implementation=implementation), rngs=nnx.Rngs(2))
        graphdef, state = nnx.split(model)

        def loss(state):
            logits = nnx.merge(graphdef, state)(ids, segment_ids_BT=seg, positions_BT=pos)
            return (logits[0, :96] ** 2).mean()

        return jax.value_and_grad(loss)(state)

    (v_ref, g_ref), (v, g) = value_and_grads("xla"), value_and_grads("pallas")
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, g_ref)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_decoder_loss_matches_autodiff_of_the_logits(dtype, hf_model):
    import jax
    import optax

    config = ModernBertConfig.from_hf_dict(hf_model(num_hidden_layers=1).config.to_dict(), dtype=dtype)
    graphdef, state = nnx.split(ModernBertForMaskedLM(config, rngs=nnx.Rngs(3)))
    ids, mask = random_batch(300, 2, 24, pad_from=[24, 20])
    positions = np.array([[1, 4, 9, 0], [2, 3, 19, 0]], np.int32)
    labels = np.array([[7, 100, 299, -100], [5, 6, 8, -100]], np.int32)

    def reference(state):
        logits = nnx.merge(graphdef, state)(ids, mask, masked_positions_BM=positions).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, np.maximum(labels, 0))
        return jnp.sum(jnp.where(labels >= 0, nll, 0.0))

    def fused(state):
        return jnp.sum(nnx.merge(graphdef, state).mlm_nll(ids, labels, attention_mask_BT=mask,
                                                          masked_positions_BM=positions))

    (v_ref, g_ref), (v, g) = jax.value_and_grad(reference)(state), jax.value_and_grad(fused)(state)
    tol = dict(float32=(1e-5, 1e-6), bfloat16=(2e-2, 1e-3))[dtype]
    np.testing.assert_allclose(v, v_ref, rtol=tol[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol[0], atol=tol[1]), g, g_ref)


@pytest.mark.parametrize("backward", ["xla", "interpret"])
def test_hand_written_vjps_match_autodiff(backward):
    """GeGLU, LayerNorm and add+LayerNorm VJPs vs autodiff; "interpret" runs the Pallas LayerNorm
    backward kernel on CPU: 15 rows (not a multiple of its 16-row tile) of width 24 (not a power of 2)."""
    import jax

    from neobert_jax.model import layer_norm as ln
    from neobert_jax.model.modernbert import geglu

    rng = np.random.RandomState(0)
    a, b, w, w2 = (jnp.asarray(rng.randn(3, 5, 24).astype(np.float32)) for _ in range(4))
    scale, bias = jnp.asarray(rng.rand(24).astype(np.float32) + 0.5), jnp.asarray(rng.randn(24).astype(np.float32))

    def reference_norm(x, s, c):
        mean = x.mean(-1, keepdims=True)
        y = (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * s
        return y if c is None else y + c

    def fused_add(h, d, s, c):
        total, y = ln.add_layer_norm(h, d, s, c, 1e-5, jnp.float32, backward)
        return (total * w2).sum() + (y * w).sum()

    pairs = [
        (lambda x, y: (geglu(x, y) * w).sum(), lambda x, y: (jax.nn.gelu(x, approximate=False) * y * w).sum(), (a, b)),
        (lambda x, s, c: (ln.layer_norm(x, s, c, 1e-5, jnp.float32, backward) * w).sum(),
         lambda x, s, c: (reference_norm(x, s, c) * w).sum(), (a, scale, bias)),
        (lambda x, s: (ln.layer_norm(x, s, None, 1e-5, jnp.float32, backward) * w).sum(),
         lambda x, s: (reference_norm(x, s, None) * w).sum(), (a, scale)),
        (lambda h, d, s, c: fused_add(h, d, s, c),
         lambda h, d, s, c: ((h + d) * w2).sum() + (reference_norm(h + d, s, c) * w).sum(), (a, b, scale, bias)),
        (lambda h, d, s: fused_add(h, d, s, None),
         lambda h, d, s: ((h + d) * w2).sum() + (reference_norm(h + d, s, None) * w).sum(), (a, b, scale)),
    ]
    for ours, reference, args in pairs:
        argnums = tuple(range(len(args)))
        for g, r in zip(jax.grad(ours, argnums)(*args), jax.grad(reference, argnums)(*args)):
            np.testing.assert_allclose(g, r, atol=5e-6)

    # bfloat16 activations through the kernel: gradients within bf16 rounding of the float32 ones
    grads = jax.grad(lambda h, d: fused_add(h, d, scale, None), (0, 1))
    lo = grads(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
    hi = grads(a.astype(jnp.bfloat16).astype(jnp.float32), b.astype(jnp.bfloat16).astype(jnp.float32))
    assert lo[0].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(lo[0], np.float32), hi[0], atol=0.05, rtol=0.02)


def test_one_pass_logsumexp_kernel_matches_xla():
    """The GPU head's log-sum-exp kernel, interpreted: ragged row/column tiles, large offsets, bf16."""
    import jax

    from neobert_jax.model.logsumexp_pallas import logsumexp_rows

    rng = np.random.RandomState(0)
    x = rng.randn(13, 2500).astype(np.float32) * 4
    x[3] += 300.0  # exp would overflow without the running max
    x[5, 2499] = 80.0  # the row's max sits in the last, partly masked column tile
    for dtype in (jnp.float32, jnp.bfloat16):
        xs = jnp.asarray(x, dtype)
        want = jax.nn.logsumexp(xs.astype(jnp.float32), axis=-1)
        got = logsumexp_rows(xs, block_rows=8, block_cols=1024, interpret=True)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_the_config_allows_exactly_the_attention_backends_there_are():
    from neobert_jax.config import ATTENTION_BACKENDS
    from neobert_jax.model import backends

    assert sorted(ATTENTION_BACKENDS) == backends()


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
@pytest.mark.parametrize("float32", [True, False])
@pytest.mark.parametrize("local", [True, False])
@pytest.mark.parametrize("tf32x3", [True, False])
@pytest.mark.parametrize("per_device", [True, False])
def test_auto_attention_chooses_by_platform_dtype_window_precision_and_mesh(platform, float32, local, tf32x3,
                                                                           per_device):
    from neobert_jax.model.attention import choose_backend

    chosen = choose_backend(platform, float32, local, tf32x3=tf32x3, per_device=per_device)
    expected = {"cpu": "xla",
                "gpu": "pallas" if not float32 or (local and tf32x3) else "xla",  # fp32 global: XLA is faster
                "tpu": "splash" if per_device else "xla"}[platform]  # Mosaic cannot be auto-partitioned
    assert chosen == expected
