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

import numpy as np
import orbax.checkpoint as ocp

from neobert_jax.hf.checkpoint import check_params_match
from neobert_jax.train.state import TrainState

CHECKPOINTS = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message names it and what to do."""


class RunCheckpointer:
    def __init__(self, output_dir: str, save_every: int, keep: int):
        self.directory = os.path.abspath(os.path.join(output_dir, CHECKPOINTS))
        self.save_every = save_every
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=True,
                cleanup_tmp_directories=True,  # a save killed midway leaves `*.orbax-checkpoint-tmp*`
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
        """Saves when `step` is a multiple of save_every (or `force`); returns whether it did.

        Never during a non-finite streak: the keep-N rotation would delete the checkpoints from
        before the divergence, the only ones worth resuming from.
        """
        if step in self.manager.all_steps() or self.in_nonfinite_streak(state):
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

    @staticmethod
    def in_nonfinite_streak(state: TrainState) -> bool:
        return int(np.asarray(state.nonfinite_streak.addressable_data(0))) > 0

    def restore(self, step: int, abstract: TrainState) -> tuple[TrainState, dict, dict]:
        """-> (state placed with `abstract`'s shardings, data-iterator state, meta).

        A checkpoint of another model (model.* or tokenizer changed) or a damaged one fails with
        one line naming its dir and the step before it, instead of orbax's traceback.
        """
        step_dir = os.path.join(self.directory, str(step))
        try:
            check_params_match(os.path.join(step_dir, "params"), abstract.params)
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(abstract.params),
                    trainer=ocp.args.StandardRestore(abstract.trainer_item()),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # orbax / tensorstore raise many types for damaged or foreign items
            earlier = [s for s in self.manager.all_steps() if s < step]
            hint = (f"move {step_dir} out of {self.directory} to resume from step {max(earlier)}" if earlier else
                    "rerun with config.resume=False to start over")
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise CheckpointError(f"checkpoint {step_dir} cannot be restored ({reason}); {hint}") from None
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
