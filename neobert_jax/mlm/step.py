"""The compiled train and eval steps.

One `jax.jit` call per optimizer step, or per `train.steps_per_call` steps
(neobert_jax.runtime.multistep). The global batch is split into micro-batches inside the step, their gradients are summed, and every micro-batch loss is divided by the number
of predicted tokens of the whole global batch. The summed gradient is therefore exactly
the gradient of the one-big-batch mean loss, however the batch is split over micro-batches
and devices.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from neobert_jax.runtime import multistep, optim, sharding
from neobert_jax.runtime.model_init import uses_dropout
from neobert_jax.runtime.state import ModelParts, TrainState

IGNORE_LABEL = -100


def labels_key(masked_logits_only: bool) -> str:
    return "masked_labels" if masked_logits_only else "labels"


def nll_sum_and_count(model, batch: dict, masked_logits_only: bool, dropout_rng=None):
    """Summed float32 cross-entropy over predicted tokens, and their count.

    masked_logits_only: the head runs on `masked_positions` only (B, M, V); otherwise on
    every position (B, T, V) with `labels` (-100 = not predicted).
    """
    labels = batch[labels_key(masked_logits_only)]
    nll = model.mlm_nll(
        batch["input_ids"], labels, segment_ids_BT=batch["segment_ids"], positions_BT=batch["positions"],
        masked_positions_BM=batch["masked_positions"] if masked_logits_only else None, dropout_rng=dropout_rng,
    )
    return jnp.sum(nll), jnp.sum(labels != IGNORE_LABEL)


def make_train_step(parts: ModelParts, optimizer: optim.Optimizer, train_cfg, state_sh: TrainState, mesh: Mesh,
                    steps_per_call: int = 1) -> Callable:
    """(state, batch) -> (state, metrics); the state is donated, metrics are replicated scalars.
    Non-finite steps are skipped (`optim.apply_update_if_finite`). steps_per_call > 1:
    (state, stacked batches, n) -> (state, metrics of each of the steps_per_call slots), n steps run."""
    accum = train_cfg.grad_accum_steps
    masked_only = train_cfg.masked_logits_only
    dropout = uses_dropout(parts.config)

    def train_step(state: TrainState, batch: dict):
        predicted = jnp.sum(batch[labels_key(masked_only)] != IGNORE_LABEL)
        denom = jnp.maximum(predicted, 1).astype(jnp.float32)
        micro = jax.tree.map(lambda x: sharding.split_micro(x, accum, mesh), batch)
        step_rng = jax.random.fold_in(state.rng, state.step)

        def accumulate(grads_acc, xs):
            micro_batch, i = xs

            def loss_fn(params):
                dropout_rng = jax.random.fold_in(step_rng, i) if dropout else None
                nll_sum, _ = nll_sum_and_count(parts.merge(params), micro_batch, masked_only, dropout_rng)
                return nll_sum / denom, nll_sum

            grads, nll_sum = jax.grad(loss_fn, has_aux=True)(state.params)
            # gradients stay sharded like the parameters (a reduce-scatter under fsdp, not an all-reduce)
            return jax.lax.with_sharding_constraint(jax.tree.map(jnp.add, grads_acc, grads), state_sh.params), nll_sum

        zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, state.params), state_sh.params)
        grads, nll_sums = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(accum)))
        loss = jnp.sum(nll_sums) / denom
        new_state, grad_norm = optim.apply_update_if_finite(state, grads, loss, optimizer)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": optimizer.learning_rate(state.hparams, state.step - state.nonfinite_total),
            "predicted_tokens": predicted,
            "real_tokens": jnp.sum(batch["segment_ids"] != 0),
            "nonfinite_streak": new_state.nonfinite_streak,
            "nonfinite_total": new_state.nonfinite_total,
        }
        return new_state, metrics

    replicated = sharding.replicated(mesh)
    if steps_per_call == 1:
        return jax.jit(train_step, in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sh, replicated), donate_argnums=0)
    return jax.jit(multistep.fold_steps(train_step, steps_per_call),
                   in_shardings=(state_sh, multistep.stacked_batch_sharding(mesh), replicated),
                   out_shardings=(state_sh, replicated), donate_argnums=0)


def make_eval_step(parts: ModelParts, train_cfg, params_sh, mesh: Mesh) -> Callable:
    """(params, batch) -> (summed nll, predicted-token count), deterministic (no dropout)."""
    masked_only = train_cfg.masked_logits_only

    def eval_step(params, batch):
        return nll_sum_and_count(parts.merge(params), batch, masked_only)

    return jax.jit(
        eval_step,
        in_shardings=(params_sh, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
