"""Schedules match HF's, the weight-decay mask spares norms and biases, config errors are clear."""

import json

import jax
import numpy as np
import pytest
import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from neobert_jax.mlm import config as train_config
from neobert_jax.runtime import config as runtime_config
from neobert_jax.runtime import optim, sharding, state

TOTAL, WARMUP, PEAK = 50, 8, 1e-3


def hf_lrs(make_schedule, warmup: int = WARMUP) -> np.ndarray:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    sched = make_schedule(opt, warmup, TOTAL)
    lrs = []
    for _ in range(TOTAL):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(lrs)


@pytest.fixture
def our_lrs(train_cfg):
    """our_lrs(schedule name, **train config overrides) -> our learning rate at each of TOTAL steps."""
    def lrs(name: str, **overrides) -> np.ndarray:
        settings = {"schedule": name, "learning_rate": PEAK, "warmup_steps": WARMUP, **overrides}
        schedule = optim.make_schedule(train_cfg(**settings), TOTAL)
        return np.array([float(schedule(s)) for s in range(TOTAL)])

    return lrs


@pytest.mark.parametrize("name,hf", [("cosine", get_cosine_schedule_with_warmup),
                                     ("linear", get_linear_schedule_with_warmup)])
def test_schedules_match_hf(name, hf, our_lrs):
    np.testing.assert_allclose(our_lrs(name), hf_lrs(hf), rtol=1e-5, atol=1e-10)


def test_warmup_longer_than_the_run_keeps_hf_semantics(our_lrs, train_cfg):
    """HF's schedule climbs to step/warmup of the peak and never decays; so does ours, and says so."""
    long_warmup = 80
    np.testing.assert_allclose(our_lrs("cosine", warmup_steps=long_warmup),
                               hf_lrs(get_cosine_schedule_with_warmup, long_warmup), rtol=1e-5, atol=1e-10)
    cfg = train_cfg(schedule="cosine", learning_rate=PEAK, warmup_steps=long_warmup)
    summary = optim.summarize_schedule(cfg, TOTAL)
    assert summary.peak_lr == pytest.approx(PEAK * 49 / 80) and summary.final_lr == pytest.approx(summary.peak_lr)
    text = summary.describe(cfg, TOTAL)
    assert "warning: train.warmup_steps=80 >= the run's 50 steps" in text and "61% of" in text, text


def test_warmup_fraction_fits_every_run_length(train_cfg):
    for total in (20, 50, 5000):
        cfg = train_cfg(schedule="cosine", learning_rate=PEAK, warmup_steps=1000, warmup_fraction=0.1)
        summary = optim.summarize_schedule(cfg, total)
        assert summary.warmup_steps == round(0.1 * total)
        assert summary.peak_lr == pytest.approx(PEAK) and summary.final_lr < 0.01 * PEAK
        assert "warning" not in summary.describe(cfg, total)


@pytest.mark.parametrize("rows,epochs,max_steps,multiple,seq_len,expected", [
    (1000, 10, 0, 1, 512, 4),  # 8 rows would give 1,250 < 1,500 steps
    (1000, 10, 0, 8, 512, 8),  # never below one row per batch shard
    (10_000_000, 10, 0, 1, 512, 64),  # a large corpus: the largest batch, 32k tokens
    (10_000_000, 10, 0, 1, 128, 256),  # the same tokens in shorter rows
    (1000, 10, 500, 1, 512, 4),  # max_steps only cuts the run short: the batch of the full run
    (300, 1, 0, 2, 512, 4),  # too small for 1,500 steps at any batch: the smallest, 2k tokens
])
def test_auto_batch_size(rows, epochs, max_steps, multiple, seq_len, expected, train_cfg):
    cfg = train_cfg(auto_batch_steps=1500, auto_batch_min_tokens=2048, auto_batch_max_tokens=32768, seq_len=seq_len)
    cfg.max_steps = max_steps  # not an argument: the rule must ignore it
    assert optim.auto_batch_size(rows, epochs, cfg, multiple) == expected


def test_warmup_stable_decay(our_lrs, train_cfg):
    lrs = our_lrs("wsd", decay_fraction=0.2)  # decay over the last 10 of 50 steps
    np.testing.assert_allclose(lrs[:WARMUP], PEAK * np.arange(WARMUP) / WARMUP, rtol=1e-6)
    np.testing.assert_allclose(lrs[WARMUP:40], PEAK, rtol=1e-6)
    np.testing.assert_allclose(lrs[40:], PEAK * (1 - np.arange(10) / 10), rtol=1e-5)
    assert float(optim.make_schedule(train_cfg(schedule="wsd", learning_rate=PEAK, warmup_steps=WARMUP,
                                               decay_fraction=0.2), TOTAL)(TOTAL)) == 0.0


def test_constant_after_warmup_and_no_warmup(our_lrs):
    np.testing.assert_allclose(our_lrs("constant")[WARMUP:], PEAK, rtol=1e-6)
    assert our_lrs("cosine", warmup_steps=0)[0] == pytest.approx(PEAK)


def test_decay_mask_spares_norms_and_biases(tiny_model):
    _, params = state.ModelParts.split(tiny_model())
    flat = {"/".join(str(k.key) for k in path): bool(leaf) for path, leaf in
            jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]}
    no_decay = sorted(k for k, v in flat.items() if not v)
    assert no_decay and all(k.endswith(("norm/scale", "decoder_bias")) for k in no_decay), no_decay
    decay = sorted(k for k, v in flat.items() if v)
    assert "model/embeddings/tok_embeddings" in decay and "model/layers/0/attn/Wqkv/kernel" in decay
    assert all(k.endswith(("kernel", "tok_embeddings")) for k in decay), decay


def test_decay_is_decoupled_and_scaled_by_lr(train_cfg):
    """A zero gradient leaves Adam's step at 0, so the update is exactly -lr * wd * p on matrices."""
    cfg = train_cfg(schedule="constant", warmup_steps=0, learning_rate=0.1, weight_decay=0.5, max_grad_norm=0.0)
    tx = optim.make_optimizer(cfg, optim.hyperparameters(cfg, 10))
    params = {"kernel": np.ones((2, 2), np.float32), "bias": np.ones((2,), np.float32)}
    updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.05, rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)


def _newton_schulz(m, steps=5, coeffs=(3.4445, -4.775, 2.0315)):
    """Muon's quintic iteration (Jordan et al.), written out in numpy."""
    x = m / (np.linalg.norm(m) + 1e-8)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    a, b, c = coeffs
    for _ in range(steps):
        g = x @ x.T
        x = a * x + (b * g + c * g @ g) @ x
    return x if wide else x.T


def test_muon_first_update_matches_a_numpy_reference(tiny_model, train_cfg):
    """train.optimizer=muon: the layers' and the MLM head's matrices take Muon's orthogonalized,
    RMS-matched step, everything else AdamW's, with one learning rate and decoupled decay."""
    lr, wd, beta = 0.01, 0.1, optim.MUON_BETA
    cfg = train_cfg(schedule="constant", warmup_steps=0, learning_rate=lr, weight_decay=wd, max_grad_norm=0.0,
                    optimizer="muon")
    _, params = state.ModelParts.split(tiny_model())
    params = jax.tree.map(np.asarray, params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(0)
    grads = jax.tree_util.tree_unflatten(treedef, [rng.normal(size=p.shape).astype(np.float32) for p in leaves])
    tx = optim.make_optimizer(cfg, optim.hyperparameters(cfg, 10))
    updates, _ = tx.update(grads, tx.init(params), params)
    labels = optim.muon_labels(params)
    seen = set()
    for (path, u), g, p, label in zip(jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree.leaves(grads),
                                      jax.tree.leaves(params), jax.tree.leaves(labels)):
        name = "/".join(str(k.key) for k in path)
        if label == "muon":
            momentum = g * (beta / (1 + beta) + 1)  # Nesterov, bias-corrected, at step 1
            step = _newton_schulz(momentum.astype(np.float64)) * np.sqrt(max(p.shape)) * optim.MUON_RMS
            expected = -lr * (step + wd * p)
        else:  # AdamW's first step: g / |g|
            expected = -lr * (g / (np.abs(g) + 1e-8) + (wd * p if p.ndim >= 2 else 0.0))
        np.testing.assert_allclose(u, expected, rtol=2e-4, atol=1e-6, err_msg=name)
        seen.add((label, name.split("/")[-1]))
    assert ("muon", "kernel") in seen and ("adamw", "tok_embeddings") in seen and ("adamw", "scale") in seen


def test_a_muon_run_trains(write_corpus, tiny_config, tmp_path):
    from neobert_jax.mlm.task import train

    cfg = tiny_config(tmp_path / "run", write_corpus(tmp_path / "c.txt"),
                      **{"train.optimizer": "muon", "train.max_steps": 8, "train.learning_rate": 3e-3})
    result = train(cfg)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl") if '"loss"' in line]
    assert result.completed and all(np.isfinite(losses)) and losses[-1] < losses[0]
    again = train(cfg)  # restores the Muon state from the last checkpoint
    assert again.completed and again.step == result.step


def test_unknown_override_key_lists_valid_keys(tmp_path):
    config_file = tmp_path / "c.py"
    config_file.write_text("from neobert_jax.mlm.config import default_config\n"
                           "def get_config():\n    return default_config()\n")
    with pytest.raises(KeyError) as error:
        runtime_config.check_override_keys(runtime_config.load_config_file(str(config_file)),
                                         ["--config.train.learning_rte=1"])
    message = error.value.args[0]
    assert "config.train.learning_rte" in message and "did you mean config.train.learning_rate" in message
    assert "train.batch_size" in message and "data.train_files" in message
    lines = message.splitlines()
    assert len(lines) == len(runtime_config.flat_keys(train_config.default_config())) + 1  # one per key
    assert "  train.learning_rate = 0.0008" in lines
    path, argv = runtime_config.split_config_arg(["x", f"--config={config_file}", "--config.train.learning_rate=1"])
    assert (path, argv) == (str(config_file), ["x", "--config.train.learning_rate=1"])
    runtime_config.check_override_keys(runtime_config.load_config_file(path), argv[1:])


@pytest.mark.parametrize("key,value,fragment", [
    ("train.precision", "fp16", "train.precision"),
    ("train.batch_size", 30, "grad_accum_steps"),
    ("train.seq_len", 10_000, "max_position_embeddings"),
])
def test_bad_values_name_their_key(key, value, fragment):
    cfg = train_config.default_config()
    cfg.train.grad_accum_steps = 4
    section, name = key.split(".")
    cfg[section][name] = value
    with pytest.raises(ValueError, match=fragment):
        train_config.validate(cfg)


def test_layer_lr_decay_scales_each_layers_update(tiny_model, train_cfg):
    """train.layer_lr_decay=d: layer i of L moves d ** (L - i) as far as without it, the token
    embeddings d ** (L + 1), the final norm and the MLM head the full step (weight decay included)."""
    decay = 0.5
    plain_cfg = train_cfg(schedule="constant", warmup_steps=0, learning_rate=0.01, weight_decay=0.1)
    layered_cfg = train_cfg(schedule="constant", warmup_steps=0, learning_rate=0.01, weight_decay=0.1,
                            layer_lr_decay=decay)
    model = tiny_model()
    layers = model.config.num_hidden_layers
    _, params = state.ModelParts.split(model)
    params = jax.tree.map(np.asarray, params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(0)
    grads = jax.tree_util.tree_unflatten(treedef, [rng.normal(size=p.shape).astype(np.float32) for p in leaves])
    updates = {}
    for name, cfg in (("plain", plain_cfg), ("layered", layered_cfg)):
        tx = optim.make_optimizer(cfg, optim.hyperparameters(cfg, 10))
        out, _ = tx.update(grads, tx.init(params), params)
        updates[name] = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(u)
                         for path, u in jax.tree_util.tree_flatten_with_path(out)[0]}
    expected = {"model/embeddings/tok_embeddings": decay ** (layers + 1), "model/final_norm/scale": 1.0,
                "head/dense/kernel": 1.0, f"model/layers/{layers - 1}/attn/Wqkv/kernel": decay,
                "model/layers/0/mlp/Wi/kernel": decay ** layers}
    for name, factor in expected.items():
        key = next(k for k in updates["plain"] if k.startswith(name))
        assert np.abs(updates["plain"][key]).max() > 0, key
        np.testing.assert_allclose(updates["layered"][key], factor * updates["plain"][key], rtol=1e-6, err_msg=key)


def _changed(value):
    """Another valid value of a train.* key of the same kind (on stays on: clipping, layer decay)."""
    if isinstance(value, bool):
        return not value
    return value + 1 if isinstance(value, int) else value * 0.5


def _lowered_step(compiled_step, tiny_model, cfg, mesh, mlm_batch, total_steps: int) -> str:
    train_step, st, _, _ = compiled_step(tiny_model(), cfg, mesh, total_steps=total_steps)
    return train_step.lower(st, sharding.global_batch(mlm_batch(4, 16, 96), mesh)).as_text()


def test_the_step_is_one_program_whatever_its_hyperparameters(compiled_step, tiny_model, train_cfg, one_device_mesh,
                                                               mlm_batch):
    """Every optim.DATA_KEYS key changed, and the run's length: the lowered train step is the same
    program (the persistent cache serves a run of another length or learning rate), and so is the
    key the executable cache files it under. What decides the structure (the schedule, clipping or
    layer decay switched on or off) gives another program and key."""
    base = dict(layer_lr_decay=0.8, warmup_steps=3, schedule="linear")
    first = train_cfg(**base)
    other = train_cfg(**base)
    for key in optim.DATA_KEYS:
        other[key] = _changed(first[key])
    assert other.max_grad_norm > 0 and other.layer_lr_decay < 1
    program = _lowered_step(compiled_step, tiny_model, first, one_device_mesh, mlm_batch, total_steps=100)
    assert _lowered_step(compiled_step, tiny_model, other, one_device_mesh, mlm_batch, total_steps=37) == program
    assert optim.Optimizer(other).program_settings() == optim.Optimizer(first).program_settings()
    for change in ({"schedule": "cosine"}, {"max_grad_norm": 0.0}, {"layer_lr_decay": 1.0}):
        structural = train_cfg(**{**base, **change})
        assert optim.Optimizer(structural).program_settings() != optim.Optimizer(first).program_settings(), change
        assert _lowered_step(compiled_step, tiny_model, structural, one_device_mesh, mlm_batch, total_steps=100) != program, change


def test_the_step_reads_its_learning_rate_from_the_state(compiled_step, tiny_model, train_cfg, one_device_mesh,
                                                         mlm_batch):
    """One compiled step, two states: each state's hparams give its own learning rate and update."""
    cfg = train_cfg(schedule="constant", warmup_steps=0, max_grad_norm=0.0)
    train_step, st, _, shardings = compiled_step(tiny_model(), cfg, one_device_mesh)
    batch = sharding.global_batch(mlm_batch(4, 16, 96), one_device_mesh)
    host = jax.device_get(st)  # each call donates the state it is given
    start = host.params
    moved = {}
    for lr in (1e-3, 4e-3):
        hp = optim.hyperparameters(train_cfg(schedule="constant", warmup_steps=0, max_grad_norm=0.0,
                                             learning_rate=lr, weight_decay=0.0), 100)
        new, metrics = train_step(jax.device_put(host.replace(hparams=hp), shardings), batch)
        assert float(metrics["learning_rate"]) == pytest.approx(lr)
        moved[lr] = jax.device_get(new.params)
    assert train_step._cache_size() == 1
    # Adam's first step is lr * sign(g): four times the rate moves every parameter four times as far
    for a, b, p in zip(jax.tree.leaves(moved[1e-3]), jax.tree.leaves(moved[4e-3]), jax.tree.leaves(start)):
        np.testing.assert_allclose(b - p, 4 * (a - p), rtol=2e-3, atol=1e-7)
