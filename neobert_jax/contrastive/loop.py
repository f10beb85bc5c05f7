"""The contrastive run: `train_contrastive(config)` from setup to `output_dir/st`.

Same conduct as the MLM trainer (neobert_jax.train.loop): metrics read back one step late,
checkpoints every `save_every` steps and on SIGTERM/SIGINT (rerun to resume), a stop after
`max_nonfinite_steps` non-finite steps in a row, metrics.jsonl / TensorBoard / loss PNG. The
evaluation sets run before the first step and after the last (and every `eval_every` steps);
the end prints both side by side.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import numpy as np

from neobert_jax.contrastive.config import BEST_METRIC, validate
from neobert_jax.contrastive.embedder import Embedder
from neobert_jax.contrastive.evaluation import evaluate, format_comparison
from neobert_jax.contrastive.run_setup import ContrastiveSetup, setup_contrastive
from neobert_jax.contrastive.step import make_contrastive_step, place_batch
from neobert_jax.hf.sentence_transformers import save_sentence_transformers_dir
from neobert_jax.train.loop import NonFiniteLossError, run_training
from neobert_jax.train.reporting import RunReporter
from neobert_jax.train.signals import StopRequest

ST_EXPORT_DIR = "st"
EVAL_PREFIX = "eval_"


@dataclasses.dataclass
class ContrastiveResult:
    step: int
    completed: bool  # False: stopped by a signal, resumable
    train_loss: float | None  # mean over every finite step of the run, resumed parts included
    before: dict[str, float] | None  # evaluation of the starting model (step 0)
    after: dict[str, float] | None  # evaluation at the last step
    st_dir: str | None


@dataclasses.dataclass
class _Interval:
    steps: int = 0
    finite_steps: int = 0
    loss_sum: float = 0.0
    texts: int = 0
    tokens: int = 0
    slots: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)


def train_contrastive(config) -> ContrastiveResult:
    return run_training(config, validate, setup_contrastive, _ContrastiveRun)


class _ContrastiveRun:
    def __init__(self, config, setup: ContrastiveSetup, reporter: RunReporter):
        self.config, self.setup, self.reporter = config, setup, reporter
        t = config.train
        layout = setup.batches.layout
        self.train_step = make_contrastive_step(
            setup.parts, setup.tx, setup.schedule, setup.objective, slots=layout.slots,
            pooling_mode=config.pooling.mode, accum=t.grad_accum_steps,
            has_targets=setup.batches.data.vectors is not None, state_sh=setup.shardings, mesh=setup.mesh)
        self.embedder = None
        if setup.sts_sets or setup.retrieval_sets:
            self.embedder = Embedder(setup.parts, setup.text_tokenizer, pooling_mode=config.pooling.mode,
                                     mesh=setup.mesh, batch_size=config.eval.batch_size)
        self.loss_totals = dict(setup.loss_totals)
        self.interval = _Interval()
        self.last_eval: dict | None = None
        self.tokens_per_s = 0.0

    def run(self, stop: StopRequest) -> ContrastiveResult:
        s, t = self.setup, self.config.train
        state, step, pending = s.state, s.start_step, None
        if self.embedder is not None and step == 0:
            self.reporter.log(0, self._eval_scalars(state.params))
            self.interval = _Interval()  # the evaluation's time is not training time
        while step < s.total_steps and not stop.requested(pending):
            batch, stats = next(s.batches)
            state, metrics = self.train_step(state, place_batch(batch, stats, s.mesh))
            step += 1
            if pending is not None:
                self._record(*pending)
            pending = (step, metrics, stats)
            eval_due = self.embedder is not None and (
                step == s.total_steps or (t.eval_every > 0 and step % t.eval_every == 0))
            if eval_due or step % t.save_every == 0:
                self._record(*pending, extra=self._eval_scalars(state.params) if eval_due else None)
                pending = None
                self._save(step, state, evaluated=eval_due)
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
            return ContrastiveResult(step, False, self._train_loss(), None, None, None)
        return self._finish(step, state)

    def _record(self, step: int, metrics, stats: dict, extra: dict | None = None) -> None:
        m = jax.device_get(metrics)
        t, iv = self.config.train, self.interval
        loss = float(m["loss"])
        finite = math.isfinite(loss) and math.isfinite(float(m["grad_norm"]))
        iv.steps += 1
        iv.texts += stats["texts"]
        iv.tokens += stats["tokens"]
        iv.slots += stats["slots"]
        if finite:
            iv.finite_steps += 1
            iv.loss_sum += loss
            self.loss_totals["sum"] += loss
            self.loss_totals["count"] += 1
        else:
            self.reporter.message(f"step {step}: non-finite loss or gradients, update skipped "
                                  f"({int(m['nonfinite_total'])} skipped so far)")
        streak = int(m["nonfinite_streak"])
        mean_loss = iv.loss_sum / iv.finite_steps if iv.finite_steps else float("nan")
        first = step == self.setup.start_step + 1
        self.reporter.progress(step, mean_loss, self.tokens_per_s)
        if first or extra or streak or step % t.log_every == 0 or step == self.setup.total_steps:
            scalars = {"loss": mean_loss, "learning_rate": float(m["learning_rate"]),
                       "grad_norm": float(m["grad_norm"]), "padding_efficiency": iv.tokens / iv.slots,
                       "nonfinite_steps": int(m["nonfinite_total"])}
            if not first:  # the first step's time is mostly compilation
                elapsed = time.perf_counter() - iv.started
                self.tokens_per_s = iv.tokens / elapsed
                scalars.update(texts_per_s=iv.texts / elapsed, tokens_per_s=self.tokens_per_s)
            self.reporter.log(step, {**scalars, **(extra or {})})
            self.interval = _Interval()
        if streak >= t.max_nonfinite_steps:
            latest = self.setup.checkpointer.latest_step()
            raise NonFiniteLossError(
                f"{streak} non-finite steps in a row (train.max_nonfinite_steps={t.max_nonfinite_steps}) at step "
                f"{step}; the last checkpoint ({'none' if latest is None else f'step {latest}'}) is intact. "
                "Lower train.learning_rate or use train.precision=fp32 before resuming")

    def _eval_scalars(self, params) -> dict:
        """The evaluation sets' metrics, keyed `eval_<set>_<metric>` for metrics.jsonl / TensorBoard."""
        s = self.setup
        results = evaluate(lambda texts: self.embedder.encode(params, texts), s.sts_sets, s.retrieval_sets)
        self.last_eval = results
        return {EVAL_PREFIX + k: v for k, v in results.items()}

    def _before(self) -> dict | None:
        """Step 0's evaluation, from this run or (when resumed) from metrics.jsonl."""
        for record in self.reporter.records:
            if record["step"] == 0:
                return {k.removeprefix(EVAL_PREFIX): v for k, v in record.items() if k.startswith(EVAL_PREFIX)}
        return None

    def _save(self, step: int, state, force: bool = False, evaluated: bool = False, log=None) -> None:
        """`evaluated`: `last_eval` is this step's, which ranks it for train.keep_best_checkpoint."""
        meta = {"step": step, "loss_totals": self.loss_totals}
        metrics = {BEST_METRIC: float(np.mean(list(self.last_eval.values())))} if evaluated and self.last_eval else None
        self.setup.checkpointer.save(step, state, self.setup.batches.get_state(), meta, force=force, metrics=metrics,
                                     log=log)

    def _train_loss(self) -> float | None:
        totals = self.loss_totals
        return totals["sum"] / totals["count"] if totals["count"] else None

    def _finish(self, step: int, state) -> ContrastiveResult:
        s = self.setup
        self._save(step, state, force=True)
        if self.embedder is not None and self.last_eval is None:  # resumed after the last step
            self.reporter.log(step, self._eval_scalars(state.params))
        after = self.last_eval
        st_dir = self._export(state.params)
        s.checkpointer.wait()
        curve = self.reporter.write_loss_curve(f"{self.config.loss.name} loss")
        self.reporter.end_progress()
        before, train_loss = self._before(), self._train_loss()
        report = self.reporter.message
        if curve:
            report(f"loss curve: {curve}")
        report(f"exported sentence-transformers model: {st_dir}")
        if train_loss is not None:
            report(f"Final train loss: {train_loss:.4f}")
        if after:
            report("evaluation (before = the init_from model, after = this run):\n" + format_comparison(before, after))
        return ContrastiveResult(step, True, train_loss, before, after, st_dir)

    def _export(self, params) -> str:
        """output_dir/st, a sentence-transformers folder (process 0 writes)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            host_params = multihost_utils.process_allgather(params, tiled=True)
        else:
            host_params = jax.device_get(params)
        out_dir = os.path.join(os.path.abspath(self.config.output_dir), ST_EXPORT_DIR)
        if jax.process_index() == 0:
            host_params = jax.tree.map(np.asarray, host_params)
            save_sentence_transformers_dir(
                self.setup.parts.merge(host_params), out_dir, tokenizer_dir=self.setup.tokenizer_dir,
                pooling=self.config.pooling.mode, normalize=self.config.pooling.normalize,
                max_seq_length=self.config.train.seq_len, overwrite=True)
        return out_dir
