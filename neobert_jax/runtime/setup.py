"""The setup sequence every task shares, and what it hands the runner.

A task's setup (neobert_jax.mlm.setup, neobert_jax.contrastive.setup) reads top to bottom:
`begin_setup` (the checks before anything is read, the mesh), then what is its own (tokenizer,
data, model, its `Resolved` record; `check_model_fits` once model and tokenizer are known), then
`finish_setup` (optimizer and its hyperparameters -> shardings -> start or resume -> run files).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable

import jax
from jax.sharding import Mesh

from neobert_jax.runtime import optim, sharding
from neobert_jax.runtime.checkpoint import RunCheckpointer
from neobert_jax.runtime.model_init import architecture_of
from neobert_jax.runtime.resolved import Resolved
from neobert_jax.runtime.run_dir import TOKENIZER_DIR, check_resume, write_run_files
from neobert_jax.runtime.state import (ModelParts, TrainState, abstract_state, create_train_state, place_hparams,
                                      state_shardings)


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
    optimizer: optim.Optimizer  # the step builds its update from it and the state's hparams
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


def start_or_resume(config, resolved: Resolved, output_dir: str, parts, params, tx, hparams: dict, shardings, data,
                    log, best: tuple[str, str]):
    """-> (checkpointer, state, loss_totals): the latest checkpoint of output_dir (restoring the data
    iterator too) unless config.resume is False, which deletes them; otherwise a fresh state.
    `best`: the metric and mode that pick the checkpoint train.keep_best_checkpoint keeps."""
    t = config.train
    os.makedirs(output_dir, exist_ok=True)  # only now: bad data or init_from leave no empty run dir behind
    checkpointer = RunCheckpointer(output_dir, t.save_every, t.keep_checkpoints,
                                   best=best if t.keep_best_checkpoint else None)
    latest = checkpointer.latest_step()
    if latest is not None and config.resume:
        check_resume(resolved, output_dir)
        state, data_state, meta = checkpointer.restore(latest, abstract_state(shardings, parts, tx))
        data.set_state(data_state)
        log(f"resumed from {checkpointer.directory}/{latest}")
        return checkpointer, state.replace(hparams=place_hparams(hparams, shardings)), meta["loss_totals"]
    if latest is not None:
        log(f"config.resume=False: replacing the checkpoints in {checkpointer.directory}")
        checkpointer.delete_all()
    return checkpointer, create_train_state(params, tx, hparams, shardings, config.seed), {"sum": 0.0, "count": 0}


@dataclasses.dataclass(frozen=True)
class Begun:
    """What `begin_setup` gives the task's own part of the setup and `finish_setup`."""

    output_dir: str
    mesh: Mesh
    phases: Phases


def begin_setup(config) -> Begun:
    """The checks before any data is read: init_from exists, and every process feeds batch shards of
    its own (its rows are not copies of another's)."""
    if config.init_from and not os.path.exists(config.init_from):
        raise FileNotFoundError(f"config.init_from: {config.init_from}: no such file or directory")
    phases = Phases()
    mesh = sharding.make_mesh(config.mesh)
    processes, shards = jax.process_count(), sharding.batch_rows_divisor(mesh)
    if sharding.process_batch_shards(mesh) * processes != shards:
        raise ValueError(
            f"config.mesh {dict(mesh.shape)}: the {shards} batch shards (mesh.data x mesh.fsdp) do not split over the "
            f"{processes} processes; make mesh.data x mesh.fsdp a multiple of {processes} (mesh.tensor within a host)"
        )
    phases.done("devices")
    return Begun(os.path.abspath(config.output_dir), mesh, phases)


def check_model_fits(config, model_config, tokenizer) -> None:
    """The model holds the tokenizer's ids and train.seq_len's positions; each task calls it as soon as
    both are known (before its data is read, where it can)."""
    if model_config.vocab_size < len(tokenizer):
        raise ValueError(f"init_from {config.init_from} has vocab_size {model_config.vocab_size}, smaller than the "
                         f"tokenizer's {len(tokenizer)} tokens")
    positions = architecture_of(model_config).value(model_config, "max_position_embeddings")
    if config.train.seq_len > positions:
        raise ValueError(f"config.train.seq_len={config.train.seq_len} exceeds the model's max_position_embeddings "
                         f"{positions}")


def finish_setup(config, log, begun: Begun, setup_cls: type, *, parts: ModelParts, params, data, resolved: Resolved,
                 tokenizer, tokenizer_note: dict | None, write_tokenizer: bool, best: tuple[str, str],
                 wrap_tx: Callable | None = None, **own):
    """-> `setup_cls` (a TaskSetup) with the common fields and the task's `own`, once the state is started
    or resumed; run_config.json, config.json and the tokenizer are written last, so a refused run leaves
    nothing behind. `data`: the train iterator a resume restores; `wrap_tx(tx, params)`: the task's change to the
    optimizer, given the parameters' shapes; `best`: start_or_resume's."""
    t, model_config = config.train, parts.config
    optimizer = optim.Optimizer(t, wrap=wrap_tx and functools.partial(wrap_tx, params=parts.abstract_params))
    hparams = optim.hyperparameters(t, resolved.total_steps)
    tx = optimizer.tx(hparams)
    shardings = state_shardings(parts, tx, hparams, begun.mesh)
    checkpointer, state, loss_totals = start_or_resume(config, resolved, begun.output_dir, parts, params, tx, hparams,
                                                       shardings, data, log, best)
    begun.phases.done("state")
    write_run_files(config, resolved, begun.output_dir, model_config, tokenizer, tokenizer_note, write_tokenizer)
    begun.phases.done("run files")
    return setup_cls(mesh=begun.mesh, parts=parts, optimizer=optimizer, shardings=shardings, state=state,
                     resolved=resolved, start_step=int(state.step), loss_totals=loss_totals, checkpointer=checkpointer,
                     tokenizer_dir=os.path.join(begun.output_dir, TOKENIZER_DIR), phases=begun.phases.seconds, **own)
