"""The compiled step: accumulation equals one big batch, both loss paths agree, non-finite
steps are skipped and counted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neobert_jax.runtime import sharding
from neobert_jax.mlm import step

ROWS, SEQ, VOCAB = 8, 24, 96


@pytest.fixture(scope="module")
def batches(mlm_batch):
    return [mlm_batch(ROWS, SEQ, VOCAB, seed=s) for s in range(3)]


@pytest.fixture(scope="module")
def accum_runs(batches, one_device_mesh, compiled_step, tiny_model, train_cfg):
    """Three steps with 1 and 4 micro-batches per global batch: (metrics, final params), plus
    the initial params and the model parts under "init"."""
    runs = {}
    for accum in (1, 4):
        cfg = train_cfg(grad_accum_steps=accum, batch_size=ROWS)
        train_step, st, parts, _ = compiled_step(tiny_model(), cfg, one_device_mesh)
        runs["init"] = (jax.device_get(st.params), parts)
        metrics = []
        for batch in batches:
            st, m = train_step(st, sharding.global_batch(batch, one_device_mesh))
            metrics.append(jax.device_get(m))
        runs[accum] = (metrics, jax.device_get(st.params))
    return runs


def test_accumulation_matches_one_big_batch(accum_runs):
    base_metrics, base_params = accum_runs[1]
    metrics, params = accum_runs[4]
    for a, b in zip(base_metrics, metrics):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), base_params, params)


def test_step_gradient_is_the_global_mean_loss_gradient(batches, accum_runs):
    """The step normalizes by all predicted tokens at once, not per micro-batch: its grad norm
    equals that of the plain mean cross-entropy over the whole batch, and differs from the
    mean of per-micro-batch means (the rows mask 10-50% of their tokens, unevenly)."""
    params, parts = accum_runs["init"]
    batch, metrics = batches[0], accum_runs[4][0][0]

    @jax.jit
    def mean_loss_grad(p, b):
        def mean_loss(p):
            nll, count = step.nll_sum_and_count(parts.merge(p), b, True)
            return nll / count

        return jax.grad(mean_loss)(p)

    def norm(tree):
        return jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree)))

    global_norm = norm(mean_loss_grad(params, batch))
    np.testing.assert_allclose(metrics["grad_norm"], global_norm, rtol=1e-5)
    micro_rows = [np.arange(i, ROWS, 4) for i in range(4)]
    per_micro = [mean_loss_grad(params, {k: v[rows] for k, v in batch.items()}) for rows in micro_rows]
    naive_norm = norm(jax.tree.map(lambda *gs: sum(gs) / 4, *per_micro))
    assert abs(float(naive_norm) - float(global_norm)) > 1e-3 * float(global_norm)


def test_masked_only_and_full_logits_losses_agree(batches, tiny_model):
    model = tiny_model()
    for batch in batches:
        masked = step.nll_sum_and_count(model, batch, masked_logits_only=True)
        full = step.nll_sum_and_count(model, batch, masked_logits_only=False)
        np.testing.assert_allclose(masked[0], full[0], rtol=1e-5)
        assert int(masked[1]) == int(full[1]) == int((batch["labels"] != -100).sum())


def test_nonfinite_step_is_skipped_and_counted(batches, one_device_mesh, compiled_step, tiny_model, train_cfg):
    train_step, st, _, shardings = compiled_step(tiny_model(), train_cfg(batch_size=ROWS), one_device_mesh)
    st, _ = train_step(st, sharding.global_batch(batches[0], one_device_mesh))
    good = jax.device_get(st)
    poisoned_params = jax.tree.map(np.copy, good.params)
    poisoned_params["decoder_bias"][0] = np.nan
    st = jax.device_put(good.replace(params=poisoned_params), shardings)
    for expected_streak in (1, 2):
        st, m = train_step(st, sharding.global_batch(batches[1], one_device_mesh))
        assert not np.isfinite(m["loss"])
        assert int(m["nonfinite_streak"]) == expected_streak and int(st.nonfinite_total) == expected_streak
    after = jax.device_get(st)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), after.params, poisoned_params)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), after.opt_state, good.opt_state)
    assert int(after.step) == 3

    st = jax.device_put(after.replace(params=good.params), shardings)
    st, m = train_step(st, sharding.global_batch(batches[2], one_device_mesh))
    assert np.isfinite(m["loss"]) and int(m["nonfinite_streak"]) == 0 and int(m["nonfinite_total"]) == 2
    # the schedule follows applied updates (step 3 minus 2 skipped = update 1), not batches
    np.testing.assert_allclose(m["learning_rate"], 1e-3 * 1 / 2, rtol=1e-6)


@pytest.mark.parametrize("overrides,rtol", [({"remat": "full"}, 1e-5), ({"dtype": "bfloat16"}, 2e-2)])
def test_remat_and_bf16_steps_track_the_fp32_step(batches, accum_runs, overrides, rtol, one_device_mesh,
                                                  compiled_step, tiny_model, train_cfg):
    """Rematerialization changes memory, not math; bf16 compute stays within bf16 rounding."""
    train_step, st, _, _ = compiled_step(tiny_model(**overrides), train_cfg(batch_size=ROWS), one_device_mesh)
    reference = accum_runs[1][0]
    for batch, expected in zip(batches[:2], reference):
        st, m = train_step(st, sharding.global_batch(batch, one_device_mesh))
        np.testing.assert_allclose(m["loss"], expected["loss"], rtol=rtol)
        np.testing.assert_allclose(m["grad_norm"], expected["grad_norm"], rtol=10 * rtol)
    assert jax.tree.leaves(st.params)[0].dtype == jnp.float32  # params stay float32 under bf16 compute


def test_dropout_noise_is_a_function_of_the_step(batches, accum_runs, one_device_mesh, compiled_step, tiny_model,
                                                 train_cfg):
    """Dropout keys come from (saved rng, step), so a resumed run redraws exactly the same masks."""
    model = tiny_model(embedding_dropout=0.1, attention_dropout=0.1, mlp_dropout=0.1)
    train_step, st, _, shardings = compiled_step(model, train_cfg(batch_size=ROWS), one_device_mesh)
    start = jax.device_get(st)
    _, first = train_step(st, sharding.global_batch(batches[0], one_device_mesh))
    _, again = train_step(jax.device_put(start, shardings), sharding.global_batch(batches[0], one_device_mesh))
    _, later = train_step(jax.device_put(start.replace(step=start.step + 1), shardings),
                          sharding.global_batch(batches[0], one_device_mesh))
    assert float(first["loss"]) == float(again["loss"])
    assert float(first["loss"]) != float(later["loss"])
    assert float(first["loss"]) != float(accum_runs[1][0][0]["loss"])  # dropout is really on
