"""Several optimizer steps in one compiled call (`train.steps_per_call`).

A small step (the student at 2 rows; docs/recipe.md times it) is shorter than the host's share of it:
dispatching a ~400-leaf state, copying the batch, reading the metrics back. One call that scans
K steps over K stacked batches pays that once per K steps. Step i of a call runs only when
i < n (the call's step count, a traced argument), so calls cut short at an eval or save point,
or at the end of the run, reuse the same compiled program; the skipped slots cost a branch.
Each step is the single step itself (same rng fold, same update), so a run gives the same
result whatever K is.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from neobert_jax.model.shards import BATCH_AXES

AUTO_STEPS_PER_CALL = 16  # accelerators; the CPU keeps 1 (its steps are long, and a stop waits for a call)


def resolve_steps_per_call(value: int, platform: str) -> int:
    """train.steps_per_call: 0 (auto) -> 16 on GPU/TPU, 1 on CPU."""
    if value:
        return value
    return 1 if platform == "cpu" else AUTO_STEPS_PER_CALL


def fold_steps(train_step: Callable, steps_per_call: int) -> Callable:
    """(state, batch) -> (state, metrics) into (state, batches, n) -> (state, metrics stacked on a
    leading axis of steps_per_call); slots >= n leave the state as it is and report zeros."""

    def folded(state, batches, n):
        metrics_shape = jax.eval_shape(train_step, state, jax.tree.map(lambda x: x[0], batches))[1]

        def skip(state, _):
            return state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)

        def body(state, xs):
            batch, i = xs
            return jax.lax.cond(i < n, train_step, skip, state, batch)

        return jax.lax.scan(body, state, (batches, jnp.arange(steps_per_call)))

    return folded


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """(steps, rows, ...) arrays: rows split like a single batch's, the steps axis whole."""
    return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES))


def stack_batches(batches: list[dict[str, np.ndarray]], steps_per_call: int) -> dict[str, np.ndarray]:
    """n <= steps_per_call local batches -> one with a leading axis of steps_per_call; the slots
    past n repeat the last batch (they are skipped, only their shape matters)."""
    pad = [batches[-1]] * (steps_per_call - len(batches))
    return {k: np.stack([b[k] for b in batches + pad]) for k in batches[0]}
