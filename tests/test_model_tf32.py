"""model/tf32.py: float32 products as three TF32 passes written out (`model.tf32_split`). TF32 is
emulated off the GPU (operands rounded to TF32, float32 products), so these check the arithmetic:
the rounding, the three passes' accuracy against float64 (one pass is not accurate), the gradients'
products, and both model families with the split on against plain float32 (loss and every gradient),
with the split products in their program."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neobert_jax.model import tf32
from neobert_jax.runtime.model_init import architecture


def relative(out, ref) -> float:
    return float(np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref))


def test_tf32_rounding_keeps_ten_mantissa_bits_to_the_nearest():
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    hi = np.asarray(tf32.round_to_tf32(jnp.asarray(x)))
    assert not np.any(hi.view(np.uint32) & 0x1FFF)  # the 13 low mantissa bits are gone
    assert np.all(np.abs(x - hi) <= np.abs(x) * 2.0 ** -11)  # half a TF32 unit: rounded, not truncated
    hi, lo = map(np.asarray, tf32.split(jnp.asarray(x)))
    assert np.array_equal(hi.astype(np.float64) + lo, x.astype(np.float64))  # hi + lo is x exactly


def test_three_passes_and_their_gradients_are_float32_accurate():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((4, 16, 96), np.float32), rng.standard_normal((96, 40), np.float32)
    g = rng.standard_normal((4, 16, 40), np.float32)
    x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))

    @jax.jit
    def product_and_gradients(x, w, g):
        y, pull_back = jax.vjp(tf32.matmul, x, w)
        return (y, *pull_back(g))

    y, d_x, d_w = product_and_gradients(x, w, g)
    assert relative(y, x64 @ w64) < 1e-6
    assert relative(d_x, g64 @ w64.T) < 1e-6
    assert relative(d_w, x64.reshape(-1, 96).T @ g64.reshape(-1, 40)) < 1e-6
    assert relative(tf32.one_pass(x, w, emulate=True), x64 @ w64) > 1e-4  # what the two small passes correct


def tiny(arch: str, **runtime):
    config_class = architecture(arch).config_class
    names = {f.name for f in dataclasses.fields(config_class)}
    special = {k: v for k, v in dict(pad_token_id=3, cls_token_id=1, sep_token_id=2).items() if k in names}
    config = config_class(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=96, **special, **runtime)
    return nnx.split(architecture(arch).model_class(config, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("arch", ["modernbert", "neobert"])
def test_models_with_split_products_match_plain_float32(arch):
    rng = np.random.default_rng(2)
    ids = rng.integers(5, 320, (2, 32)).astype(np.int32)
    positions = np.array([[1, 4, 9, 30], [2, 3, 19, 0]], np.int32)
    labels = np.array([[7, 100, 299, 5], [5, 6, 8, -100]], np.int32)

    def value_and_grads(split: bool):
        graphdef, state = tiny(arch, tf32x3=True, tf32_split=split)

        def loss(state):
            return jnp.sum(nnx.merge(graphdef, state).mlm_nll(ids, labels, masked_positions_BM=positions))

        dots = str(jax.make_jaxpr(jax.value_and_grad(loss))(state)).count("dot_general")
        return jax.jit(jax.value_and_grad(loss))(state), dots

    ((v_ref, g_ref), plain_dots), ((v, g), split_dots) = value_and_grads(False), value_and_grads(True)
    assert split_dots > 2 * plain_dots, (split_dots, plain_dots)  # the dense layers' and head's products split
    np.testing.assert_allclose(v, v_ref, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, g_ref)
