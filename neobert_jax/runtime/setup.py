"""What every task's setup hands the runner: the common fields, and the start or resume of the
state from output_dir's checkpoints."""

from __future__ import annotations

import dataclasses
import os
import time

import optax
from jax.sharding import Mesh

from neobert_jax.runtime.checkpoint import RunCheckpointer
from neobert_jax.runtime.resolved import Resolved
from neobert_jax.runtime.run_dir import check_resume
from neobert_jax.runtime.state import ModelParts, TrainState, abstract_state, create_train_state


class Phases:
    """Seconds spent in each phase of a setup, for the run's start-up line."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._since
        self._since = now


@dataclasses.dataclass(kw_only=True)
class TaskSetup:
    mesh: Mesh
    parts: ModelParts
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    shardings: TrainState
    state: TrainState
    resolved: Resolved  # what the run decided that the config left open; the run reads it, not the config
    start_step: int
    loss_totals: dict  # run-wide sums of the runner, restored on resume
    checkpointer: RunCheckpointer
    tokenizer_dir: str  # output_dir/tokenizer, the one the model trains with
    phases: dict[str, float] = dataclasses.field(default_factory=dict)  # Phases.seconds

    @property
    def total_steps(self) -> int:
        return self.resolved.total_steps


def start_or_resume(config, resolved: Resolved, output_dir: str, parts, params, tx, shardings, data, log,
                    best=("eval_loss", "min")):
    """-> (checkpointer, state, loss_totals): the latest checkpoint of output_dir (restoring the data
    iterator too) unless config.resume is False, which deletes them; otherwise a fresh state.
    `best`: the metric and mode that pick the checkpoint train.keep_best_checkpoint keeps."""
    t = config.train
    os.makedirs(output_dir, exist_ok=True)  # only now: bad data or init_from leave no empty run dir behind
    checkpointer = RunCheckpointer(output_dir, t.save_every, t.keep_checkpoints,
                                   best=best if t.keep_best_checkpoint else None)
    latest = checkpointer.latest_step()
    if latest is not None and config.resume:
        check_resume(resolved.batch_size, output_dir)
        state, data_state, meta = checkpointer.restore(latest, abstract_state(shardings, parts, tx))
        data.set_state(data_state)
        log(f"resumed from {checkpointer.directory}/{latest}")
        return checkpointer, state, meta["loss_totals"]
    if latest is not None:
        log(f"config.resume=False: replacing the checkpoints in {checkpointer.directory}")
        checkpointer.delete_all()
    return checkpointer, create_train_state(params, tx, shardings, config.seed), {"sum": 0.0, "count": 0}
