"""Our compiled train step reproduces HF torch training: ModernBertForMaskedLM + torch AdamW +
cosine-with-warmup + clipping + gradient accumulation, from the same converted weights on the
same batches. This pins the optimizer, the schedule, the decay mask and the loss path together."""

import numpy as np
import torch
from flax import nnx
from transformers import get_cosine_schedule_with_warmup
from transformers.trainer_pt_utils import get_parameter_names

from neobert_jax.config import ModernBertConfig
from neobert_jax.hf import load_state_dict_into_model
from neobert_jax.model import ModernBertForMaskedLM
from neobert_jax.mlm import config as train_config
from neobert_jax.runtime import optim, sharding, state
from neobert_jax.mlm import step

STEPS, ROWS, SEQ, ACCUM, WARMUP = 20, 8, 32, 2, 5


def make_batches(vocab: int, pad: int, seed: int = 0) -> list[dict]:
    """30%-masked rows, some padded: the label/position layouts of the data contract."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(STEPS):
        ids = rng.integers(5, vocab, (ROWS, SEQ)).astype(np.int32)
        lengths = rng.integers(SEQ // 2, SEQ + 1, ROWS)
        segments = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
        ids[segments == 0] = pad
        chosen = (rng.random((ROWS, SEQ)) < 0.3) & (segments == 1)
        labels = np.where(chosen, ids, -100).astype(np.int32)
        inputs = np.where(chosen & (rng.random((ROWS, SEQ)) < 0.8), 4, ids).astype(np.int32)
        masked_positions = np.zeros((ROWS, SEQ), np.int32)
        masked_labels = np.full((ROWS, SEQ), -100, np.int32)
        for r in range(ROWS):
            where = np.flatnonzero(chosen[r])
            masked_positions[r, : len(where)] = where
            masked_labels[r, : len(where)] = ids[r, where]
        batches.append(dict(input_ids=inputs, segment_ids=segments, labels=labels,
                            positions=np.tile(np.arange(SEQ, dtype=np.int32), (ROWS, 1)) * segments,
                            masked_positions=masked_positions, masked_labels=masked_labels))
    return batches


def torch_losses(hf, batches, cfg) -> list[float]:
    """What HF Trainer does: decay groups by name, per-micro-batch sum / all predicted tokens."""
    decay = set(get_parameter_names(hf, [torch.nn.LayerNorm], ["bias", "layernorm", "rmsnorm"]))
    named = dict(hf.named_parameters())
    groups = [{"params": [p for n, p in named.items() if n in decay], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named.items() if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_b1, cfg.adam_b2), eps=cfg.adam_eps)
    sched = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    hf.train()
    losses = []
    for batch in batches:
        total = int((batch["labels"] != -100).sum())
        step_loss = 0.0
        for micro in range(ACCUM):
            rows = slice(micro * ROWS // ACCUM, (micro + 1) * ROWS // ACCUM)
            logits = hf(torch.tensor(batch["input_ids"][rows]).long(),
                        attention_mask=torch.tensor(batch["segment_ids"][rows])).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), torch.tensor(batch["labels"][rows]).long().reshape(-1),
                ignore_index=-100, reduction="sum") / total
            loss.backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(step_loss)
    return losses


def jax_losses(hf, batches, cfg) -> list[float]:
    model = ModernBertForMaskedLM(ModernBertConfig.from_hf_dict(hf.config.to_dict()), rngs=nnx.Rngs(1))
    load_state_dict_into_model(model, {k: v.detach().numpy() for k, v in hf.state_dict().items()})
    parts, params = state.ModelParts.split(model)
    mesh = sharding.make_mesh(train_config.default_config().mesh)
    optimizer, hparams = optim.Optimizer(cfg), optim.hyperparameters(cfg, STEPS)
    tx = optimizer.tx(hparams)
    shardings = state.state_shardings(parts, tx, hparams, mesh)
    train_state = state.create_train_state(params, tx, hparams, shardings, seed=0)
    train_step = step.make_train_step(parts, optimizer, cfg, shardings, mesh)
    losses = []
    for batch in batches:
        train_state, metrics = train_step(train_state, sharding.global_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return losses


def test_twenty_steps_match_torch_adamw_training(hf_model):
    cfg = train_config.default_config().train
    cfg.learning_rate, cfg.warmup_steps, cfg.grad_accum_steps, cfg.batch_size = 3e-3, WARMUP, ACCUM, ROWS
    cfg.schedule, cfg.weight_decay, cfg.max_grad_norm = "cosine", 0.1, 1.0
    hf = hf_model(seed=0, vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                  num_attention_heads=2, local_attention=8)
    batches = make_batches(hf.config.vocab_size, hf.config.pad_token_id)
    ours_masked = jax_losses(hf, batches, cfg)
    cfg.masked_logits_only = False
    ours_full = jax_losses(hf, batches, cfg)
    reference = torch_losses(hf, batches, cfg)

    rel_masked = np.abs(np.subtract(ours_masked, reference)) / np.abs(reference)
    rel_full = np.abs(np.subtract(ours_full, reference)) / np.abs(reference)
    assert rel_full.max() < 1e-3, rel_full
    assert rel_masked.max() < 1e-3, rel_masked
    assert reference[-1] < reference[0] - 0.05  # the comparison covers real learning, not a flat line
