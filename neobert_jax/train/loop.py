"""The training run: `train(config)` from setup to the exported HF model.

Step metrics are read back one step late, so the host never waits for the device except at
log, eval and save points. A SIGTERM/SIGINT ends the run after the current step with a
checkpoint (resume = rerun the same command); too many non-finite steps in a row end it
with NonFiniteLossError and the last checkpoint untouched.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import sys
import time

import jax
import numpy as np

from neobert_jax.hf import save_hf_dir
from neobert_jax.train import optim, sharding
from neobert_jax.train.config import validate
from neobert_jax.train.model_init import matmul_precision
from neobert_jax.train.reporting import RunReporter, perplexity
from neobert_jax.train.run_dir import RunDirLock
from neobert_jax.train.run_setup import RunSetup, setup_run
from neobert_jax.train.signals import StopRequest
from neobert_jax.train.step import make_eval_step, make_train_step
from neobert_jax.train.throughput import peak_flops_per_device, train_flops_per_step

HF_EXPORT_DIR = "hf"
RECENT_STEPS = 100  # the final train loss is the mean over this many last steps


class NonFiniteLossError(RuntimeError):
    """Raised after `train.max_nonfinite_steps` skipped steps in a row."""


@dataclasses.dataclass
class RunResult:
    step: int
    completed: bool  # False: stopped by a signal, resumable
    train_loss: float | None  # mean of the last RECENT_STEPS finite steps (the run mean reads as a bad run)
    eval_loss: float | None
    hf_dir: str | None


@dataclasses.dataclass
class _Interval:
    """Host-side sums over the steps since the last log line."""

    steps: int = 0
    finite_steps: int = 0
    loss_sum: float = 0.0
    real_tokens: int = 0
    predicted_tokens: int = 0
    flops: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)


def main_process_print(text: str) -> None:
    if jax.process_index() == 0:
        print(text, file=sys.stderr, flush=True)


def run_training(config, validate_fn, setup_fn, runner_cls):
    """The frame every training command shares: validation, signal handling, matmul precision,
    the run's setup and reporter, and their cleanup; `runner_cls(config, setup, reporter).run(stop)`
    is the command's own loop."""
    validate_fn(config)
    with StopRequest(on_signal=main_process_print) as stop, RunDirLock(config.output_dir, jax.process_index() == 0):
        with jax.default_matmul_precision(matmul_precision(config.train.precision)):
            setup_started = time.time()
            setup = setup_fn(config, main_process_print)
            reporter = RunReporter(os.path.abspath(config.output_dir), setup.total_steps, setup.start_step,
                                   enabled=jax.process_index() == 0)
            reporter.marks.update(setup_started=setup_started, setup_done=time.time())
            try:
                return runner_cls(config, setup, reporter).run(stop)
            finally:
                setup.checkpointer.close()
                reporter.close()


def train(config) -> RunResult:
    # A copy: setup resolves automatic settings (train.batch_size=0) into the run's config.
    return run_training(config.copy_and_resolve_references(), validate, setup_run, _Trainer)


class _Trainer:
    def __init__(self, config, setup: RunSetup, reporter: RunReporter):
        self.config, self.setup, self.reporter = config, setup, reporter
        t = config.train
        self.train_step = make_train_step(setup.parts, setup.tx, setup.schedule, t, setup.shardings, setup.mesh)
        self.eval_step = None
        if setup.eval_data is not None:
            self.eval_step = make_eval_step(setup.parts, t, setup.shardings.params, setup.mesh)
            self.eval_start = setup.eval_data.get_state()
        self.peak_flops = peak_flops_per_device(jax.devices()[0].device_kind, t.precision) * jax.device_count()
        self.loss_totals = {"tokens": 0, **setup.loss_totals}
        self.recent = collections.deque(self.loss_totals.pop("recent", []), maxlen=RECENT_STEPS)
        # A resume continues the interval the stop interrupted: the same log records and means as without it.
        self.interval = _Interval(**self.loss_totals.pop("interval", {}))
        self.last_eval: tuple[int, float] | None = None
        self.tokens_per_s = 0.0

    # ------------------------------------------------------------------ loop
    def run(self, stop: StopRequest) -> RunResult:
        s, t = self.setup, self.config.train
        state, step, pending = s.state, s.start_step, None
        while step < s.total_steps and not stop.requested(pending):
            state, metrics = self.train_step(state, sharding.global_batch(next(s.train_data), s.mesh))
            step += 1
            if pending is not None:
                self._record(*pending)
            pending = (step, metrics)
            eval_due = self.eval_step is not None and (
                step == s.total_steps or (t.eval_every > 0 and step % t.eval_every == 0))
            if eval_due or step % t.save_every == 0:
                self._record(*pending, extra=self._eval_scalars(step, state.params) if eval_due else None)
                pending = None
                self._save(step, state)
        if pending is not None:
            self._record(*pending)
        if step < s.total_steps:
            saving = time.perf_counter()
            self._save(step, state, force=True, log=self.reporter.message)
            s.checkpointer.wait()
            self.reporter.end_progress()
            self.reporter.message(f"stopped at step {step} (final save {time.perf_counter() - saving:.1f} s): latest "
                                  f"checkpoint step {s.checkpointer.latest_step()} in {s.checkpointer.directory}; "
                                  "rerun the same command to resume")
            return RunResult(step, False, self._train_loss(), None, None)
        return self._finish(step, state)

    def _record(self, step: int, metrics, extra: dict | None = None) -> None:
        """Host side of one step: sums, non-finite check, progress bar, and a log line when due."""
        m = jax.device_get(metrics)
        t, iv = self.config.train, self.interval
        loss = float(m["loss"])
        finite = math.isfinite(loss) and math.isfinite(float(m["grad_norm"]))
        iv.steps += 1
        iv.real_tokens += int(m["real_tokens"])
        self.loss_totals["tokens"] += int(m["real_tokens"])
        iv.predicted_tokens += int(m["predicted_tokens"])
        iv.flops += train_flops_per_step(self.setup.parts.config, t.batch_size, t.seq_len, int(m["predicted_tokens"]))
        if finite:
            iv.finite_steps += 1
            iv.loss_sum += loss
            self.loss_totals["sum"] += loss
            self.loss_totals["count"] += 1
            self.recent.append(loss)
        else:
            self.reporter.message(f"step {step}: non-finite loss or gradients, update skipped "
                                  f"({int(m['nonfinite_total'])} skipped so far)")
        streak = int(m["nonfinite_streak"])
        mean_loss = iv.loss_sum / iv.finite_steps if iv.finite_steps else float("nan")
        first = step == self.setup.start_step + 1
        self.reporter.progress(step, mean_loss, self.tokens_per_s)
        # Step 1, not a resume's first step: a resumed run logs the records an uninterrupted one does.
        if step == 1 or extra or streak or step % t.log_every == 0 or step == self.setup.total_steps:
            self._log(step, m, mean_loss, first, extra)
        if streak >= t.max_nonfinite_steps:
            latest = self.setup.checkpointer.latest_step()
            raise NonFiniteLossError(
                f"{streak} non-finite steps in a row (train.max_nonfinite_steps={t.max_nonfinite_steps}) at step "
                f"{step}; the last checkpoint ({'none' if latest is None else f'step {latest}'}) is intact. "
                "Lower train.learning_rate or use train.precision=fp32 before resuming")

    def _log(self, step: int, m: dict, mean_loss: float, first: bool, extra: dict | None) -> None:
        """One metrics.jsonl / TensorBoard record of the steps since the previous one."""
        t, iv = self.config.train, self.interval
        scalars = {
            "loss": mean_loss,
            "perplexity": perplexity(mean_loss) if iv.finite_steps else float("nan"),
            "learning_rate": float(m["learning_rate"]),
            "grad_norm": float(m["grad_norm"]),
            "masked_tokens": iv.predicted_tokens / iv.steps,
            "packing_efficiency": iv.real_tokens / (iv.steps * t.batch_size * t.seq_len),
            "nonfinite_steps": int(m["nonfinite_total"]),
        }
        if first:
            marks, now = self.reporter.marks, time.time()
            marks["first_step"] = now
            self.reporter.message(
                f"start-up: {now - self.reporter.started:.1f} s from process start to the first step's result: "
                f"imports {marks['setup_started'] - self.reporter.started:.1f} s, setup (tokenizer, data, model, "
                f"state, checkpoints) {marks['setup_done'] - marks['setup_started']:.1f} s, first steps "
                f"(compilation) {now - marks['setup_done']:.1f} s")
        else:  # the first step's time is mostly compilation
            elapsed = time.perf_counter() - iv.started
            self.tokens_per_s = iv.real_tokens / elapsed
            scalars["tokens_per_s"] = self.tokens_per_s
            scalars["mfu"] = iv.flops / elapsed / self.peak_flops if self.peak_flops else 0.0
        self.reporter.log(step, {**scalars, **(extra or {})})
        self.interval = _Interval()

    # ------------------------------------------------------------------ eval / save / finish
    def _eval_scalars(self, step: int, params) -> dict:
        """Loss over up to `eval_batches` eval batches, normalized by all their predicted tokens."""
        data = self.setup.eval_data
        data.set_state(self.eval_start)
        nll_sum, count = 0.0, 0
        for _, local in zip(range(self.config.train.eval_batches), data):
            nll, n = self.eval_step(params, sharding.global_batch(local, self.setup.mesh))
            nll_sum, count = nll_sum + nll, count + n
        loss = float(nll_sum) / max(int(count), 1)
        self.last_eval = (step, loss)
        return {"eval_loss": loss, "eval_perplexity": perplexity(loss)}

    def _save(self, step: int, state, force: bool = False, log=None) -> None:
        """`log`: told the size and expected duration of the save (the stop path: the cluster's grace period)."""
        interval = {k: v for k, v in dataclasses.asdict(self.interval).items() if k != "started"}
        meta = {"step": step, "loss_totals": {**self.loss_totals, "recent": list(self.recent), "interval": interval}}
        evaluated = self.last_eval is not None and self.last_eval[0] == step  # ranks it for train.keep_best_checkpoint
        self.setup.checkpointer.save(step, state, self.setup.train_data.get_state(), meta, force=force,
                                     metrics={"eval_loss": self.last_eval[1]} if evaluated else None, log=log)

    def _train_loss(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None

    def _finish(self, step: int, state) -> RunResult:
        s = self.setup
        self.reporter.marks["trained"] = time.time()
        self._save(step, state, force=True)
        if self.eval_step is not None and (self.last_eval is None or self.last_eval[0] != step):
            self._eval_scalars(step, state.params)
        hf_dir = self._export(state.params) if self.config.train.export_hf else None
        s.checkpointer.wait()
        curve = self.reporter.write_loss_curve()
        self.reporter.end_progress()
        train_loss = self._train_loss()
        eval_loss = self.last_eval[1] if self.last_eval else None
        report = self.reporter.message
        if curve:
            report(f"loss curve: {curve}")
        if hf_dir:
            report(f"exported HF model: {hf_dir}")
        t, lr = self.config.train, optim.summarize_schedule(self.config.train, s.total_steps)
        tokens = self.loss_totals["tokens"]
        marks, now = self.reporter.marks, time.time()
        report(f"run: {step:,} optimizer steps of {t.batch_size} rows x {t.seq_len}, {tokens:,} tokens seen "
               f"({step / s.train_data.steps_per_epoch:.2f} epochs), lr peak {lr.peak_lr:.3g} -> last {lr.final_lr:.3g}; "
               f"{now - self.reporter.started:.1f} s since process start, of which training after the first step "
               f"{marks['trained'] - marks.get('first_step', marks['trained']):.1f} s and the final "
               f"save/export {now - marks['trained']:.1f} s")
        if train_loss is not None:
            report(f"Final Student Train Loss: {train_loss:.4f} (mean of the last {len(self.recent)} steps; "
                   f"perplexity {perplexity(train_loss):.2f})")
        if eval_loss is not None:
            report(f"Final Student Eval Loss: {eval_loss:.4f} (perplexity {perplexity(eval_loss):.2f})")
        return RunResult(step, True, train_loss, eval_loss, hf_dir)

    def _export(self, params) -> str:
        """output_dir/hf through the same writer as convert/flax_to_torch.py (process 0 writes)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            host_params = multihost_utils.process_allgather(params, tiled=True)
        else:
            host_params = jax.device_get(params)
        out_dir = os.path.join(os.path.abspath(self.config.output_dir), HF_EXPORT_DIR)
        if jax.process_index() == 0:
            host_params = jax.tree.map(np.asarray, host_params)
            save_hf_dir(self.setup.parts.merge(host_params), out_dir, tokenizer_dir=self.setup.tokenizer_dir,
                        overwrite=True)
        return out_dir
