"""Orbax checkpoints of a training run: `output_dir/checkpoints/<step>/`.

Items per step: `params` (alone, so `init_from` and `convert/flax_to_torch.py` can load a
run without its optimizer), `trainer` (optimizer state, step, RNG, non-finite counters),
`data` (the input-iterator state) and `meta` (loss totals for the run-wide train perplexity).
Saves are asynchronous; every process calls `save`, orbax decides who writes what: each
process its own shards of the arrays, process 0 the JSON items. The iterator state is the
same on every process (the pipeline slices one global batch), so a checkpoint restores on
any number of processes and devices: arrays are resharded onto the restoring run's mesh.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp

from neobert_jax.train.state import TrainState

CHECKPOINTS = "checkpoints"


class RunCheckpointer:
    def __init__(self, output_dir: str, save_every: int, keep: int):
        self.directory = os.path.abspath(os.path.join(output_dir, CHECKPOINTS))
        self.save_every = save_every
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=True
            ),
            item_handlers={
                "params": ocp.StandardCheckpointHandler(),
                "trainer": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict, meta: dict, force: bool = False) -> bool:
        """Saves when `step` is a multiple of save_every (or `force`); returns whether it did."""
        if step in self.manager.all_steps():
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                trainer=ocp.args.StandardSave(state.trainer_item()),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=force,
        )

    def restore(self, step: int, abstract: TrainState) -> tuple[TrainState, dict, dict]:
        """-> (state placed with `abstract`'s shardings, data-iterator state, meta)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract.params),
                trainer=ocp.args.StandardRestore(abstract.trainer_item()),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        trainer = restored["trainer"]
        state = TrainState(params=restored["params"], **trainer)
        return state, restored["data"], restored["meta"]

    def delete_all(self) -> None:
        for step in self.manager.all_steps():
            self.manager.delete(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
