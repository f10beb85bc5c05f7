"""Tiny models and hand-made MLM batches in the data contract's layout, for trainer tests."""

import numpy as np
from flax import nnx

from neobert_jax.config import ModernBertConfig
from neobert_jax.model import ModernBertForMaskedLM
from neobert_jax.mlm import config as train_config
from neobert_jax.runtime import optim, sharding, state
from neobert_jax.mlm import step

PAD, MASK = 3, 4


def tiny_model(seed: int = 0, vocab: int = 96, **config_overrides) -> ModernBertForMaskedLM:
    """config_overrides: ModernBertConfig fields, e.g. dtype="bfloat16" or remat="full"."""
    config = ModernBertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=2, local_attention=8, pad_token_id=PAD, bos_token_id=1,
                              eos_token_id=2, cls_token_id=1, sep_token_id=2, **config_overrides)
    return ModernBertForMaskedLM(config, rngs=nnx.Rngs(seed))


def mlm_batch(rows: int, seq: int, vocab: int, seed: int = 0, max_predictions: int | None = None) -> dict:
    """Two documents per row at varying lengths, 10-50% of tokens predicted (uneven across rows)."""
    rng = np.random.default_rng(seed)
    m = max_predictions or seq
    ids = rng.integers(5, vocab, (rows, seq)).astype(np.int32)
    segments = np.zeros((rows, seq), np.int32)
    positions = np.zeros((rows, seq), np.int32)
    labels = np.full((rows, seq), -100, np.int32)
    masked_positions = np.zeros((rows, m), np.int32)
    masked_labels = np.full((rows, m), -100, np.int32)
    for r in range(rows):
        used = int(rng.integers(seq // 2, seq + 1))
        split = int(rng.integers(1, used))
        segments[r, :split], segments[r, split:used] = 1, 2
        positions[r, :split], positions[r, split:used] = np.arange(split), np.arange(used - split)
        ids[r, used:] = PAD
        rate = rng.uniform(0.1, 0.5)
        chosen = np.flatnonzero(rng.random(used) < rate)[:m]
        labels[r, chosen] = ids[r, chosen]
        masked_positions[r, : len(chosen)] = chosen
        masked_labels[r, : len(chosen)] = ids[r, chosen]
    inputs = np.where(labels != -100, MASK, ids).astype(np.int32)
    return dict(input_ids=inputs, segment_ids=segments, positions=positions, labels=labels,
                masked_positions=masked_positions, masked_labels=masked_labels)


def train_cfg(**overrides):
    cfg = train_config.default_config().train
    cfg.learning_rate, cfg.warmup_steps = 1e-3, 2
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def compiled_step(model, cfg, mesh, total_steps: int = 100):
    """-> (train_step, initial train state, parts, state shardings) for `model` on `mesh`."""
    parts, params = state.ModelParts.split(model)
    schedule = optim.make_schedule(cfg, total_steps)
    tx = optim.make_optimizer(cfg, schedule)
    shardings = state.state_shardings(parts, tx, mesh)
    train_state = state.create_train_state(params, tx, shardings, seed=0)
    return step.make_train_step(parts, tx, schedule, cfg, shardings, mesh), train_state, parts, shardings


def one_device_mesh():
    import jax

    cfg = train_config.default_config().mesh
    return sharding.make_mesh(cfg, devices=jax.devices()[:1])
