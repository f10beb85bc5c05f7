"""NeoBERT's training paths: RMSNorm's hand-written VJPs (XLA and the Pallas kernel, interpreted),
remat, dropout keys, the Pallas attention backend and bfloat16, each against the plain path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neobert_jax.model import layer_norm as ln
from neobert_jax.model.neobert import NeoBertForMaskedLM
from neobert_jax.neobert_config import NeoBertConfig

TINY = NeoBertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=48, max_length=64)


@pytest.mark.parametrize("backward", ["xla", "interpret"])
def test_rms_norm_vjps_match_autodiff(backward):
    """15 rows (not a multiple of the kernel's 16-row tile) of width 24 (not a power of 2)."""
    rng = np.random.RandomState(0)
    a, b, w, w2 = (jnp.asarray(rng.randn(3, 5, 24).astype(np.float32)) for _ in range(4))
    scale = jnp.asarray(rng.rand(24).astype(np.float32) + 0.5)

    def reference(x, s):
        return x / jnp.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * s

    pairs = [
        (lambda x, s: (ln.rms_norm(x, s, 1e-5, jnp.float32, backward) * w).sum(),
         lambda x, s: (reference(x, s) * w).sum(), (a, scale)),
        (lambda h, d, s: sum((o * v).sum() for o, v in zip(ln.add_rms_norm(h, d, s, 1e-5, jnp.float32, backward),
                                                            (w2, w))),
         lambda h, d, s: ((h + d) * w2).sum() + (reference(h + d, s) * w).sum(), (a, b, scale)),
    ]
    for ours, plain, args in pairs:
        np.testing.assert_allclose(ours(*args), plain(*args), rtol=1e-6)
        argnums = tuple(range(len(args)))
        for g, r in zip(jax.grad(ours, argnums)(*args), jax.grad(plain, argnums)(*args)):
            np.testing.assert_allclose(g, r, atol=5e-6)


def _value_and_grads(config, ids, key=None, **inputs):
    graphdef, state = nnx.split(NeoBertForMaskedLM(config, rngs=nnx.Rngs(5)))

    def loss(state):
        logits = nnx.merge(graphdef, state)(ids, dropout_rng=key, **inputs).astype(jnp.float32)
        return (logits ** 2).mean()

    return jax.value_and_grad(loss)(state)


def test_remat_and_dropout_keys_keep_the_function():
    ids = np.random.RandomState(1).randint(1, 120, (2, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    (v, g), (v_remat, g_remat) = (_value_and_grads(TINY.replace(remat=r), ids, attention_mask_BT=mask)
                                  for r in ("none", "full"))
    assert v == v_remat
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), g, g_remat)
    dropout = TINY.replace(dropout=0.1)
    assert _value_and_grads(dropout, ids, attention_mask_BT=mask)[0] == v  # no key: dropout is off
    assert _value_and_grads(dropout, ids, jax.random.key(0), attention_mask_BT=mask)[0] != v


def test_pallas_attention_and_norm_kernel_match_xla_on_a_packed_row():
    ids = np.random.RandomState(4).randint(1, 120, (1, 64)).astype(np.int32)
    seg = np.repeat([[1, 2, 0]], [24, 32, 8], axis=1).astype(np.int32)
    pos = np.concatenate([np.arange(24), np.arange(32), np.arange(8)])[None].astype(np.int32)
    v_ref, g_ref = _value_and_grads(TINY.replace(layer_norm_backward="xla"), ids, segment_ids_BT=seg,
                                    positions_BT=pos)
    v, g = _value_and_grads(TINY.replace(attn_implementation="pallas", layer_norm_backward="interpret"), ids,
                            segment_ids_BT=seg, positions_BT=pos)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, g_ref)


def test_bfloat16_logits_stay_close_to_float32():
    ids = np.random.RandomState(2).randint(1, 120, (2, 24)).astype(np.int32)
    full = np.asarray(NeoBertForMaskedLM(TINY, rngs=nnx.Rngs(0))(ids))
    half = NeoBertForMaskedLM(TINY.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))(ids)
    assert half.dtype == jnp.bfloat16
    err = np.abs(np.asarray(half, np.float32) - full).max() / np.abs(full).max()
    assert err < 0.02, err
