"""Orbax checkpoints of a training run: `output_dir/checkpoints/<step>/`.

Items per step: `params` (alone, so `init_from` and `convert/flax_to_torch.py` can load a
run without its optimizer), `trainer` (optimizer state, step, RNG, non-finite counters),
`data` (the input-iterator state) and `meta` (loss totals for the run-wide train perplexity).
Saves are asynchronous; every process calls `save`, orbax decides who writes what: each
process its own shards of the arrays, process 0 the JSON items. The iterator state is the
same on every process (the pipeline slices one global batch), so a checkpoint restores on
any number of processes and devices: arrays are resharded onto the restoring run's mesh.

A save that fails (a full disk) surfaces where the run next waits for it, as one CheckpointError
naming the step dir; its temporary dir is removed, so the previous checkpoint stays the latest.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import shutil
import textwrap
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from neobert_jax.hf.checkpoint import ParamsMismatch, check_params_match, quiet_orbax_failures
from neobert_jax.runtime.state import TrainState

CHECKPOINTS = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message names it and what to do."""


def _reason(error: BaseException) -> str:
    """The OS error behind a failed write ("No space left on device"), else the error in one line."""
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code:
        return os.strerror(int(code.group(1)))
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return textwrap.shorten(f"{type(error).__name__}: {error}", 300, placeholder=" ...")  # paths stay whole


class RunCheckpointer:
    def __init__(self, output_dir: str, save_every: int, keep: int, best: tuple[str, str] | None = None):
        """Keeps the `keep` most recent checkpoints; with `best` = (metric, "min" | "max") also the one
        whose metric (given to `save` at eval points) is best, by orbax's BestN policy, so a run that
        degrades without going non-finite never rotates away its best checkpoint."""
        self.directory = os.path.abspath(os.path.join(output_dir, CHECKPOINTS))
        self.save_every = save_every
        self.best = best
        self._saving: int | None = None  # the step of the save in flight
        self._failure: CheckpointError | None = None
        if best:
            metric, mode = best
            worst = math.inf if mode == "min" else -math.inf

            def best_fn(metrics: dict) -> float:  # a checkpoint saved between eval points has none
                return metrics.get(metric, worst)

            retention = dict(best_fn=best_fn, best_mode=mode, preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=keep),
                policies.BestN(get_metric_fn=best_fn, reverse=mode == "min", n=1,
                               keep_checkpoints_without_metrics=False),  # those of a run without `best`
            ]))
        else:
            retention = dict(max_to_keep=keep)
        quiet_orbax_failures()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every, enable_async_checkpointing=True,
                cleanup_tmp_directories=True,  # a save killed midway leaves `*.orbax-checkpoint-tmp*`
                **retention,
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

    def save(self, step: int, state: TrainState, data_state: dict, meta: dict, force: bool = False,
             metrics: dict | None = None, log=None) -> bool:
        """Saves when `step` is a multiple of save_every (or `force`); returns whether it did.

        Never during a non-finite streak: the keep-N rotation would delete the checkpoints from
        before the divergence, the only ones worth resuming from. With `best`, an eval point's
        `metrics` always save: only a checkpoint with its metric can be kept as the best. `log`
        gets the size and expected duration before the save starts.
        """
        if step in self.manager.all_steps() or self.in_nonfinite_streak(state):
            return False
        if self.best:
            force = force or metrics is not None
            metrics = metrics or {}
        else:
            metrics = None
        if log is not None and (force or self.manager.should_save(step)):
            log(f"saving checkpoint {step}: {self.expected_save(state)}")
        with self._reported_failures():
            saved = self.manager.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(state.params),
                    trainer=ocp.args.StandardSave(state.trainer_item()),
                    data=ocp.args.JsonSave(data_state),
                    meta=ocp.args.JsonSave(meta),
                ),
                metrics=metrics,
                force=force,
            )
        if saved:
            self._saving = step
        return saved

    def expected_save(self, state: TrainState) -> str:
        """The state's size and, when a complete checkpoint tells it, that save's duration."""
        size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
        text = f"{size / 2**20:,.1f} MiB"
        latest = self._complete_steps()[-1:]
        try:
            metadata = self.manager.metadata(latest[0]) if latest else None
        except Exception:  # metadata of a checkpoint from an older orbax, or one being rotated away
            metadata = None
        if metadata is not None and metadata.init_timestamp_nsecs and metadata.commit_timestamp_nsecs:
            seconds = (metadata.commit_timestamp_nsecs - metadata.init_timestamp_nsecs) / 1e9
            text += f", about {seconds:.1f} s (checkpoint {latest[0]} took that long)"
        return text

    @contextlib.contextmanager
    def _reported_failures(self):
        """A failed write of the save in flight -> one CheckpointError; its temporary dir is removed."""
        if self._failure is not None:
            raise self._failure
        try:
            yield
        except Exception as e:
            named = re.search(re.escape(self.directory) + r"/(\d+)", str(e))  # else the save in flight
            failed = os.path.join(self.directory, named.group(1) if named else str(self._saving))
            for thread in threading.enumerate():  # the failed save's other writers, still finishing theirs
                if type(thread).__module__.startswith("orbax.") and thread is not threading.current_thread():
                    with contextlib.suppress(Exception):  # orbax's join re-raises the thread's error
                        thread.join()
            if jax.process_index() == 0:
                for tmp in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
                    shutil.rmtree(tmp, ignore_errors=True)
            complete = self._complete_steps()
            latest = (f"the latest checkpoint is {os.path.join(self.directory, str(complete[-1]))}" if complete
                      else "there is no earlier checkpoint")
            self._failure = CheckpointError(f"saving checkpoint {failed} failed ({_reason(e)}); it was removed and "
                                            f"{latest}: free space and rerun to resume")
            raise self._failure from None

    def _complete_steps(self) -> list[int]:
        """Steps with a finished checkpoint on disk (orbax lists the one in flight too)."""
        names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        return sorted(int(name) for name in names if name.isdigit())

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
        except ParamsMismatch as e:  # every checkpoint of the run has that model: moving this one away is no help
            run_config = os.path.join(os.path.dirname(self.directory), "run_config.json")
            raise CheckpointError(f"{e}: the run was trained with another model than this config's; resume with the "
                                  f"model.* settings in {run_config}, or use another output_dir") from None
        try:
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
            reason = textwrap.shorten(f"{type(e).__name__}: {e}", 300, placeholder=" ...")
            raise CheckpointError(f"checkpoint {step_dir} cannot be restored ({reason}); {hint}") from None
        trainer = restored["trainer"]
        state = TrainState(params=restored["params"], **trainer)
        return state, restored["data"], restored["meta"]

    def delete_all(self) -> None:
        for step in self.manager.all_steps():
            self.manager.delete(step)

    def wait(self) -> None:
        with self._reported_failures():
            self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the save in flight; a failure already reported is not raised again."""
        try:
            if self._failure is None:
                self.wait()
        finally:
            with contextlib.suppress(Exception):
                self.manager.close()
