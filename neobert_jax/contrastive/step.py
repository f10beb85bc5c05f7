"""The compiled contrastive train step.

Its batches are placed by `sharding.place_groups`: row arrays split over the mesh's batch axes,
`text_slot`, `present` and teacher vectors replicated (`batch_shardings`, the step's input shardings).
The loss is computed on the global (N, D) embeddings, so in-batch negatives span all devices.

With `grad_accum_steps` > 1 the step runs GradCache (Gao et al., 2021): embed every
micro-batch without gradients, take the loss and its gradient with respect to the embeddings of
the whole batch, then re-run each micro-batch (same dropout masks) and pull that gradient back
through it. Only one micro-batch's activations are alive at a time, yet the negatives and the
gradient are exactly those of the full batch.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from neobert_jax.contrastive.pooling import gather_texts, pool_rows
from neobert_jax.runtime import optim, sharding
from neobert_jax.runtime.model_init import uses_dropout
from neobert_jax.runtime.state import ModelParts, TrainState

ROW_KEYS = ("input_ids", "segment_ids", "positions")


def encode_groups(model, groups: list[dict], slots: tuple[int, ...], mode: str, dropout_rng=None) -> list:
    """Pooled (R, slots, D) float32 of each row group (not normalized)."""
    pooled = []
    for g, (group, group_slots) in enumerate(zip(groups, slots)):
        rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, g)
        hidden_RTD = model.encode(group["input_ids"], segment_ids_BT=group["segment_ids"],
                                  positions_BT=group["positions"], dropout_rng=rng)
        pooled.append(pool_rows(hidden_RTD, group["segment_ids"], group["positions"], group_slots, mode))
    return pooled


def _merge_micro(x, mesh: Mesh):
    """Inverse of sharding.split_micro: (accum, R/accum, ...) -> (R, ...) in the original row order."""
    merged = jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    spec = PartitionSpec(sharding.BATCH_AXES, *([None] * (merged.ndim - 1)))
    return jax.lax.with_sharding_constraint(merged, NamedSharding(mesh, spec))


def batch_shardings(mesh: Mesh, num_groups: int, has_targets: bool) -> dict:
    rows, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    out = {"groups": [{k: rows for k in ROW_KEYS} for _ in range(num_groups)], "text_slot": replicated,
           "present": replicated}
    if has_targets:
        out["targets"] = replicated
    return out


def make_contrastive_step(parts: ModelParts, optimizer: optim.Optimizer, objective: Callable, *, slots: tuple[int, ...], pooling_mode: str, accum: int,
                          has_targets: bool, state_sh: TrainState, mesh: Mesh) -> Callable:
    """(state, placed batch) -> (state, metrics); the state is donated, metrics are replicated scalars."""
    dropout = uses_dropout(parts.config)

    def loss_of_pooled(pooled, batch):
        return objective(gather_texts(pooled, batch["text_slot"]), batch.get("targets"), batch["present"])

    def train_step(state: TrainState, batch: dict):
        step_rng = jax.random.fold_in(state.rng, state.step)

        def embed(params, groups, micro_index):
            rng = jax.random.fold_in(step_rng, micro_index) if dropout else None
            return encode_groups(parts.merge(params), groups, slots, pooling_mode, rng)

        if accum == 1:
            loss, grads = jax.value_and_grad(lambda p: loss_of_pooled(embed(p, batch["groups"], 0), batch))(
                state.params)
        else:
            micro = jax.tree.map(lambda x: sharding.split_micro(x, accum, mesh), batch["groups"])
            indices = jnp.arange(accum)
            pooled_micro = jax.lax.map(lambda xs: embed(state.params, *xs), (micro, indices))
            pooled = [_merge_micro(p, mesh) for p in pooled_micro]
            loss, d_pooled = jax.value_and_grad(loss_of_pooled)(pooled, batch)
            d_micro = [sharding.split_micro(d, accum, mesh) for d in d_pooled]

            def accumulate(grads_acc, xs):
                groups, d_groups, micro_index = xs
                _, pull_back = jax.vjp(lambda p: embed(p, groups, micro_index), state.params)
                (grads,) = pull_back(d_groups)
                return jax.lax.with_sharding_constraint(jax.tree.map(jnp.add, grads_acc, grads), state_sh.params), None

            zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, state.params), state_sh.params)
            grads, _ = jax.lax.scan(accumulate, zeros, (micro, d_micro, indices))
        new_state, grad_norm = optim.apply_update_if_finite(state, grads, loss, optimizer)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": optimizer.learning_rate(state.hparams, state.step - state.nonfinite_total),
            "nonfinite_streak": new_state.nonfinite_streak,
            "nonfinite_total": new_state.nonfinite_total,
        }
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(state_sh, batch_shardings(mesh, len(slots), has_targets)),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=0,
    )
