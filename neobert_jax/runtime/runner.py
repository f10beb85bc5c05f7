"""The one training loop every task runs: `run_task(config, setup, TaskClass, frame)`.

A task (MLM: neobert_jax.mlm.task.MlmTask; contrastive: neobert_jax.contrastive.task.
ContrastiveTask) supplies what differs, through the `Task` protocol below: its batches, compiled
step, per-step counters, evaluation, export and closing lines. The runner owns what they share:

- step metrics are read back one call late (a call runs `steps_per_call` steps), so the host
  never waits for the device except at eval and save points;
- the log / eval / save cadence, and a resume that continues the interval the stop cut (the same
  records and means as an uninterrupted run);
- a SIGTERM/SIGINT ends the run after the step in flight with a checkpoint (rerun to resume);
- too many non-finite steps in a row end it with NonFiniteLossError, the checkpoints untouched;
- the final save, evaluation, export, loss curve and run summary.

A task's entry point reads top to bottom: validate, `run_frame`, its setup, `run_task`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Protocol

import jax

from neobert_jax.runtime import optim
from neobert_jax.runtime.clocks import HostTime, Interval
from neobert_jax.runtime.compile_log import CompileLog
from neobert_jax.runtime.model_card import write_model_card
from neobert_jax.runtime.model_init import matmul_precision
from neobert_jax.runtime.reporting import RunReporter, WandbTracker
from neobert_jax.runtime.run_dir import RunDirLock
from neobert_jax.runtime.setup import TaskSetup
from neobert_jax.runtime.signals import StopRequest, write_stderr

PACE_STEPS = 3  # timed steps before a run's remaining time is judged
RECENT_STEPS = 100  # the final train loss is the mean over this many last steps (the run mean reads as a bad run)


class NonFiniteLossError(RuntimeError):
    """Raised after `train.max_nonfinite_steps` skipped steps in a row."""


class Task(Protocol):
    """What a training task gives the runner. Counters are plain numbers summed per log interval
    (one of them "tokens")."""

    loss_label: str  # the loss curve's axis label
    export_name: str  # what `export` writes, for the closing line
    batch_description: str  # one optimizer step's batch, e.g. "2 rows x 512"
    steps_per_epoch: int
    has_eval: bool
    eval_before_training: bool  # evaluate the starting model at step 0

    steps_per_call: int  # optimizer steps per compiled call (neobert_jax.runtime.multistep)

    def next_batch(self, steps: int) -> tuple[Any, list[dict]]:
        """-> (the device batch of the next `steps` steps, host-side counters of each)."""

    def train_step(self, state, batch, steps: int) -> tuple[Any, dict]:
        """Runs `steps` steps; with steps_per_call > 1 each metric has a leading axis of
        steps_per_call (the first `steps` are the steps run)."""

    def data_state(self) -> dict:
        """The data iterator's state after the last batch: what a checkpoint saves."""

    def step_counters(self, metrics: dict, host: dict) -> dict[str, float]:
        """A finished step's counters, from its fetched metrics and `next_batch`'s counters."""

    def interval_scalars(self, mean_loss: float, counters: dict, steps: int,
                         elapsed_s: float | None) -> dict[str, float]:
        """Log scalars of an interval's mean loss (nan: no finite step) and summed counters;
        elapsed_s is None for the first step (mostly compilation), which gets no throughput."""

    def evaluate(self, params) -> tuple[dict[str, float], dict[str, float]]:
        """-> (scalars to log, the metric that ranks checkpoints for train.keep_best_checkpoint)."""

    def final_scores(self, params) -> dict[str, float]:
        """Scores too costly for every evaluation, taken once after the last one ({} for none)."""

    def export(self, params) -> str:
        """Writes the run's final model (process 0) and returns its dir."""

    def closing_lines(self, train_loss: float | None, recent_steps: int, first_eval: dict | None,
                      last_eval: dict | None) -> list[str]:
        """Lines after the run summary: the final train loss (the mean of the last `recent_steps`)
        beside the task's evaluations (first_eval: the starting model's, with eval_before_training)."""

    def result(self, step: int, completed: bool, train_loss: float | None, first_eval: dict | None,
               last_eval: dict | None, export_dir: str | None): ...


def main_process_print(text: str) -> None:
    if jax.process_index() == 0:
        print(text, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Frame:
    """What surrounds a run's setup and loop: the stop request, the compilation totals, and when
    the setup started."""

    stop: StopRequest
    compiles: CompileLog
    setup_started: float


@contextlib.contextmanager
def run_frame(config):
    """Signal handling, the output dir's lock, the matmul precision and the compile log around a run."""
    say = write_stderr if jax.process_index() == 0 else (lambda text: None)
    with StopRequest(on_signal=say) as stop, RunDirLock(config.output_dir, jax.process_index() == 0):
        with jax.default_matmul_precision(matmul_precision(config.train.precision)), CompileLog() as compiles:
            yield Frame(stop, compiles, time.time())


def run_task(config, setup, task_cls, frame: Frame):
    """Runs `task_cls(config, setup, log)` to its end (or its stop) and closes the run's files; `log`
    writes a line beside the progress bar."""
    reporting = time.time()
    output_dir = os.path.abspath(config.output_dir)
    def trackers():  # W&B is told the config the run used: run_config.json's record
        return [WandbTracker(output_dir, config.logging, json.loads(setup.resolved.run_config(config)))]

    reporter = RunReporter(output_dir, setup.total_steps, setup.start_step, enabled=jax.process_index() == 0,
                           trackers=trackers if config.logging.wandb else list)
    setup.phases["reporting"] = time.time() - reporting
    reporter.marks.update(setup_started=frame.setup_started, setup_done=time.time())
    try:
        task = task_cls(config, setup, reporter.message)
        return Runner(config, setup, task, reporter, frame.compiles).run(frame.stop)
    finally:
        setup.checkpointer.close()
        reporter.close()


class Runner:
    def __init__(self, config, setup: TaskSetup, task: Task, reporter: RunReporter, compiles: CompileLog):
        self.config, self.setup, self.task, self.reporter, self.compiles = config, setup, task, reporter, compiles
        totals = dict(self.setup.loss_totals)
        self.recent = collections.deque(totals.pop("recent", []), maxlen=RECENT_STEPS)
        self.interval = Interval.restored(totals.pop("interval", {}))
        self.totals = {"sum": 0.0, "count": 0, "tokens": 0, **totals}  # run-wide, resumed with the run
        self.last_eval: tuple[int, dict, dict] | None = None  # (step, logged scalars, ranking metric)
        # the starting model's evaluation: this run's, or a resumed run's record in metrics.jsonl
        self.first_eval = next((r for r in reporter.records if r["step"] == 0), None)
        self.pace_from: tuple[int, float] | None = None  # (step, time) of this process's first step
        self.evaluating_s = 0.0  # evaluations between the first step and the last: not training time
        self.host = HostTime(lambda: "first_step" in reporter.marks and "trained" not in reporter.marks)

    # ------------------------------------------------------------------ loop
    def run(self, stop: StopRequest):
        s, t, task = self.setup, self.config.train, self.task
        state, step, pending = s.state, s.start_step, None
        stopped_early = stop.requested()  # a signal during start-up: no evaluation, no step
        if task.has_eval and task.eval_before_training and step == 0 and not stopped_early:
            self.reporter.log(0, self._evaluate(0, state.params))
            self.interval = Interval()  # the evaluation's time is not training time
        while step < s.total_steps and not self.host.timed("waiting_on_device", stop.requested,
                                                             pending[1] if pending else None):
            steps = self._steps_in_call(step)
            started = time.perf_counter()
            batch, hosts = task.next_batch(steps)
            state, metrics = task.train_step(state, batch, steps)
            self.host.count("batches_and_dispatch", started)
            if pending is not None:
                self._record_call(*pending)
            pending = (step, metrics, hosts)
            step += steps
            eval_due = task.has_eval and (step == s.total_steps or (t.eval_every > 0 and step % t.eval_every == 0))
            if eval_due or step % t.save_every == 0:
                self._record_call(*pending, extra=self._evaluate(step, state.params) if eval_due else None)
                pending = None
                self._save(step, state)
        if pending is not None:
            self._record_call(*pending)
        if step == s.start_step < s.total_steps:  # stopped during start-up: the checkpoints are as they were
            self.reporter.end_progress()
            self.reporter.message(f"stopped before step {step + 1}: nothing to save; rerun the same command to "
                                  + ("resume" if step else "start"))
            return task.result(step, False, self._train_loss(), None, None, None)
        if step < s.total_steps:
            saving = time.perf_counter()
            self._save(step, state, force=True, log=self.reporter.message)
            s.checkpointer.wait()
            curve = self.reporter.write_loss_curve(task.loss_label)
            self.reporter.end_progress()
            if curve:
                self.reporter.message(f"loss curve: {curve}")
            self.reporter.message(f"stopped at step {step} (final save {time.perf_counter() - saving:.1f} s): latest "
                                  f"checkpoint step {s.checkpointer.latest_step()} in {s.checkpointer.directory}; "
                                  "rerun the same command to resume")
            return task.result(step, False, self._train_loss(), None, None, None)
        return self._finish(step, state)

    def _steps_in_call(self, step: int) -> int:
        """As many steps as a call holds, up to the next eval or save point or the run's end."""
        t, end = self.config.train, self.setup.total_steps
        for every in (t.save_every, t.eval_every if self.task.has_eval else 0):
            if every > 0:
                end = min(end, (step // every + 1) * every)
        return min(self.task.steps_per_call, end - step)

    def _record_call(self, first_step: int, metrics, hosts: list[dict], extra: dict | None = None) -> None:
        """The steps of one call, read back in one transfer; `extra` goes with the last step's record."""
        m = self.host.timed("waiting_on_device", jax.device_get, metrics)
        for i, host in enumerate(hosts):
            one = {k: v[i] for k, v in m.items()} if self.task.steps_per_call > 1 else m
            self._record(first_step + i + 1, one, host, extra if i == len(hosts) - 1 else None)

    def _record(self, step: int, m: dict, host: dict, extra: dict | None = None) -> None:
        """Host side of one step: sums, non-finite check, progress bar, and a log line when due."""
        t, iv = self.config.train, self.interval
        loss = float(m["loss"])
        finite = math.isfinite(loss) and math.isfinite(float(m["grad_norm"]))
        iv.steps += 1
        for key, value in self.task.step_counters(m, host).items():
            iv.counters[key] = iv.counters.get(key, 0) + value
            if key == "tokens":
                self.totals["tokens"] += value
        if finite:
            iv.finite_steps += 1
            iv.loss_sum += loss
            self.totals["sum"] += loss
            self.totals["count"] += 1
            self.recent.append(loss)
        else:
            self.reporter.message(f"step {step}: non-finite loss or gradients, update skipped "
                                  f"({int(m['nonfinite_total'])} skipped so far)")
        streak = int(m["nonfinite_streak"])
        mean_loss = iv.loss_sum / iv.finite_steps if iv.finite_steps else float("nan")
        if step == self.setup.start_step + 1:  # this process's first step: a start or a resume
            self._report_start_up()
            iv.untimed, iv.started = iv.steps, time.perf_counter()
            self.pace_from = (step, iv.started)
        elapsed = iv.elapsed()
        self.reporter.progress(step, mean_loss, iv.counters.get("tokens", 0) / elapsed if elapsed else None)
        if self.pace_from and step - self.pace_from[0] == PACE_STEPS:
            self._tell_pace(step, (time.perf_counter() - self.pace_from[1]) / PACE_STEPS)
        # Step 1, not a resume's first step: a resumed run logs the records an uninterrupted one does.
        if step == 1 or extra or streak or step % t.log_every == 0 or step == self.setup.total_steps:
            self._log(step, m, mean_loss, extra)
        if streak >= t.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{streak} non-finite steps in a row (train.max_nonfinite_steps={t.max_nonfinite_steps}) at step "
                f"{step}; {self._checkpoints_after_divergence(step - streak)}. Lower train.learning_rate or use "
                "train.precision=fp32 before resuming")

    def _checkpoints_after_divergence(self, last_finite: int) -> str:
        """Which checkpoint a resume can use. The non-finite steps started from the parameters of step
        `last_finite` (their updates were skipped): a checkpoint of that step holds them, a finite loss
        at a later step is what shows an earlier checkpoint's parameters intact."""
        c = self.setup.checkpointer
        steps = sorted(c.manager.all_steps())
        intact = [s for s in steps if s < last_finite]
        if last_finite not in steps:
            return f"the last checkpoint ({f'step {intact[-1]}' if intact else 'none'}) is intact"
        bad = os.path.join(c.directory, str(last_finite))
        fallback = (f"move it out of {c.directory} to resume from step {intact[-1]}, the last intact one" if intact
                    else "there is no earlier checkpoint: rerun with config.resume=False to start over")
        return f"checkpoint {bad} holds the parameters these steps started from, which give non-finite losses; {fallback}"

    def _log(self, step: int, m: dict, mean_loss: float, extra: dict | None) -> None:
        """One metrics.jsonl / TensorBoard record of the steps since the previous one."""
        iv = self.interval
        elapsed = iv.elapsed()  # None for a first step alone: its time is mostly compilation
        scalars = {"loss": mean_loss, "learning_rate": float(m["learning_rate"]), "grad_norm": float(m["grad_norm"]),
                   "nonfinite_steps": int(m["nonfinite_total"]),
                   **self.task.interval_scalars(mean_loss, iv.counters, iv.steps, elapsed)}
        self.reporter.log(step, {**scalars, **(extra or {})})
        self.interval = Interval()

    def _tell_pace(self, step: int, step_s: float) -> None:
        """After a few timed steps: a CPU run that needs hours says so, and where the CPU path is."""
        left_h = (self.setup.total_steps - step) * step_s / 3600
        if jax.default_backend() == "cpu" and left_h > 1:
            self.reporter.message(f"on CPU this run needs about {left_h:.1f} h more ({self.setup.total_steps - step:,} "
                                  f"steps at {step_s:.1f} s); configs/tiny.py is the CPU-sized config")

    def _report_start_up(self) -> None:
        marks, now = self.reporter.marks, time.time()
        marks["first_step"] = now
        phases = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.setup.phases.items())
        self.reporter.message(
            f"start-up: {now - self.reporter.started:.1f} s from process start to the first step's result: "
            f"imports {marks['setup_started'] - self.reporter.started:.1f} s, setup "
            f"{marks['setup_done'] - marks['setup_started']:.1f} s ({phases}), first steps (compilation or "
            f"loading it) {now - marks['setup_done']:.1f} s; so far {self.compiles.describe()}")

    # ------------------------------------------------------------------ eval / save / finish
    def _evaluate(self, step: int, params) -> dict:
        """The task's eval scalars and `evaluation_s`, its duration, which lets a reader of
        metrics.jsonl take evaluation out of `elapsed_s` (scripts/bench_embedder.py does). The clock
        starts once the last step's parameters are computed: with asynchronous dispatch that step's
        device time would otherwise count as evaluation."""
        self.host.timed("waiting_on_device", jax.block_until_ready, params)
        started = time.perf_counter()
        scalars, ranking = self.task.evaluate(params)
        self.last_eval = (step, scalars, ranking)
        if step == 0:
            self.first_eval = scalars
        self.reporter.message(f"evaluation at step {step}: "
                              + ", ".join(f"{name.removeprefix('eval_')} {value:.4f}" for name, value in scalars.items()))
        spent = time.perf_counter() - started
        if self.host.counting():  # between the first step and the last
            self.evaluating_s += spent
        return {**scalars, "evaluation_s": spent}

    def _final_scores(self, step: int, params) -> dict:
        started = time.perf_counter()
        scores = self.task.final_scores(params)
        if scores:
            self.reporter.message(f"final scores at step {step}: " + ", ".join(
                f"{name.removeprefix('eval_')} {value:,}" if isinstance(value, int) else
                f"{name.removeprefix('eval_')} {value:.4f}" for name, value in scores.items()))
            self.reporter.log(step, {**scores, "evaluation_s": time.perf_counter() - started})
        return scores

    def _save(self, step: int, state, force: bool = False, log=None) -> None:
        """`log`: told the size and expected duration of the save (the stop path: the cluster's grace period)."""
        totals = {**self.totals, "recent": list(self.recent), "interval": self.interval.saved()}
        evaluated = self.last_eval is not None and self.last_eval[0] == step  # ranks it for keep_best_checkpoint
        self.setup.checkpointer.save(step, state, self.task.data_state(), {"step": step, "loss_totals": totals},
                                     force=force, metrics=self.last_eval[2] if evaluated else None, log=log)

    def _train_loss(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None

    def _finish(self, step: int, state):
        s, task, report = self.setup, self.task, self.reporter.message
        self.reporter.marks["trained"] = time.time()
        self._save(step, state, force=True)
        if task.has_eval and (self.last_eval is None or self.last_eval[0] != step):  # resumed after the last step
            self._evaluate(step, state.params)  # its record is in metrics.jsonl already
        final = self._final_scores(step, state.params)
        export_dir = task.export(state.params)
        s.checkpointer.wait()
        curve = self.reporter.write_loss_curve(task.loss_label)
        self.reporter.end_progress()
        if curve:
            report(f"loss curve: {curve}")
        if export_dir:
            report(f"exported {task.export_name}: {export_dir}")
        lr = optim.summarize_schedule(self.config.train, s.total_steps)
        marks, now = self.reporter.marks, time.time()
        # a stream's epoch length is unknown until its first pass ends: no epoch count before then
        epochs = step / task.steps_per_epoch if math.isfinite(task.steps_per_epoch) else None
        passes = f"{epochs:.2f} epochs" if epochs is not None else "within the stream's first pass"
        training_s = marks['trained'] - marks.get('first_step', marks['trained']) - self.evaluating_s
        report(f"run: {step:,} optimizer steps of {task.batch_description}, {self.totals['tokens']:,} tokens seen "
               f"({passes}), lr peak {lr.peak_lr:.3g} -> last {lr.final_lr:.3g}; "
               f"{now - self.reporter.started:.1f} s since process start, of which training after the first step "
               f"{training_s:.1f} s (evaluations {self.evaluating_s:.1f} s beside it; of the training, the host's batches and dispatch "
               f"{self.host.seconds['batches_and_dispatch']:.1f} s, its waits on the device "
               f"{self.host.seconds['waiting_on_device']:.1f} s) and the final save/export {now - marks['trained']:.1f} s")
        train_loss = self._train_loss()
        last_eval = {**self.last_eval[1], **final} if self.last_eval else None
        lines = task.closing_lines(train_loss, len(self.recent), self.first_eval, last_eval)
        for line in lines:
            report(line)
        self.reporter.write_summary(dict(
            step=step, batch=task.batch_description, epochs=epochs, tokens=self.totals["tokens"],
            lr_peak=lr.peak_lr, lr_final=lr.final_lr, warmup_steps=lr.warmup_steps, train_loss=train_loss,
            first_eval=self.first_eval, last_eval=last_eval, closing_lines=lines, loss_curve=curve is not None,
            export_dir=export_dir, compilation=self.compiles.snapshot(),
            training_s=round(training_s, 3), host_s={k: round(v, 3) for k, v in self.host.seconds.items()}))
        if export_dir and self.reporter.enabled:
            write_model_card(export_dir, self.reporter.output_dir)
        return task.result(step, True, train_loss, self.first_eval, last_eval, export_dir)
