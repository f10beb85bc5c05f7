"""The contrastive run: `train_contrastive(config)` from setup to `output_dir/st`, on the runner
the MLM trainer uses (neobert_jax.runtime.runner). The evaluation sets run before the first step and
after the last (and every `eval_every` steps); the end prints both side by side.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from neobert_jax.contrastive.config import BEST_METRIC, prompts, validate
from neobert_jax.contrastive.embedder import Embedder
from neobert_jax.contrastive.evaluation import evaluate
from neobert_jax.contrastive.setup import ContrastiveSetup, setup_contrastive
from neobert_jax.contrastive.step import make_contrastive_step
from neobert_jax.hf.sentence_transformers import save_sentence_transformers_dir
from neobert_jax.runtime import executables, sharding
from neobert_jax.runtime.reporting import EVAL_PREFIX, eval_metrics, fine_tuning_closing_lines
from neobert_jax.runtime.runner import main_process_print, run_frame, run_task

ST_EXPORT_DIR = "st"
SOURCE_STEPS = "steps_source_"  # metrics.jsonl: steps of each source (several) since the previous record


@dataclasses.dataclass
class ContrastiveResult:
    step: int
    completed: bool  # False: stopped by a signal, resumable
    train_loss: float | None  # mean of the last runner.RECENT_STEPS finite steps, resumed parts included
    before: dict[str, float] | None  # evaluation of the starting model (step 0)
    after: dict[str, float] | None  # evaluation at the last step
    st_dir: str | None


def train_contrastive(config) -> ContrastiveResult:
    validate(config)  # from here on the config is only read; what setup decides is setup.resolved
    with run_frame(config) as frame:
        setup = setup_contrastive(config, main_process_print)
        return run_task(config, setup, ContrastiveTask, frame)


def program_settings(config, setup: ContrastiveSetup) -> dict:
    """The executable cache's settings of the contrastive programs: the run's (executables.run_settings)
    and what the step and the embedder close over besides."""
    layout = setup.batches.layout
    return executables.run_settings(
        config, setup, loss=config.loss.to_dict(), pooling=config.pooling.to_dict(), slots=list(layout.slots),
        views=list(layout.view_columns), accum=config.train.grad_accum_steps,
        texts_per_row=config.data.max_texts_per_row, has_targets=setup.batches.data.vectors is not None)


class ContrastiveTask:
    """Text pairs / triplets in, the evaluation sets' metrics as the eval (before the first step
    too), a sentence-transformers folder out."""

    export_name = "sentence-transformers model"
    eval_before_training = True

    def __init__(self, config, setup: ContrastiveSetup, log):
        self.config, self.setup = config, setup
        t = config.train
        layout = setup.batches.layout
        cache = executables.for_run(config, program_settings(config, setup), log)
        self._step = cache(make_contrastive_step(
            setup.parts, setup.optimizer, setup.objective, slots=layout.slots,
            pooling_mode=config.pooling.mode, accum=t.grad_accum_steps,
            has_targets=setup.batches.data.vectors is not None, state_sh=setup.shardings, mesh=setup.mesh),
            "contrastive_train_step")
        self.has_eval = bool(setup.sts_sets or setup.retrieval_sets)
        if self.has_eval:
            self.embedder = Embedder(setup.parts, setup.text_tokenizer, pooling_mode=config.pooling.mode,
                                     mesh=setup.mesh, batch_size=config.eval.batch_size,
                                     texts_per_row=config.data.max_texts_per_row,
                                     row_shapes=setup.resolved.row_shapes, cache=cache)
        self.loss_label = f"{config.loss.name} loss"
        self.batch_description = f"{setup.resolved.batch_size} examples"
        self.steps_per_epoch = setup.batches.steps_per_epoch
        self.steps_per_call = setup.resolved.steps_per_call
        self.source_keys = [SOURCE_STEPS + s.name for s in setup.batches.sources]

    def next_batch(self, steps: int) -> tuple[dict, list[dict]]:
        batch, stats = next(self.setup.batches)
        counters = {k: stats[k] for k in ("texts", "tokens", "slots")}
        if len(self.source_keys) > 1:  # steps of each source since the previous record
            counters.update({key: float(i == stats["source"]) for i, key in enumerate(self.source_keys)})
        return sharding.place_groups(batch, stats["rows"], self.setup.mesh), [counters]

    def train_step(self, state, batch, steps: int):
        return self._step(state, batch)

    def data_state(self) -> dict:
        return self.setup.batches.get_state()

    def step_counters(self, metrics: dict, host: dict) -> dict[str, float]:
        return host

    def interval_scalars(self, mean_loss: float, counters: dict, steps: int,
                         elapsed_s: float | None) -> dict[str, float]:
        scalars = {"padding_efficiency": counters["tokens"] / counters["slots"],
                   **{k: v for k, v in counters.items() if k.startswith(SOURCE_STEPS)}}
        if elapsed_s is not None:
            scalars.update(texts_per_s=counters["texts"] / elapsed_s, tokens_per_s=counters["tokens"] / elapsed_s)
        return scalars

    def evaluate(self, params) -> tuple[dict, dict]:
        """The evaluation sets' metrics, keyed `eval_<set>_<metric>` for metrics.jsonl / TensorBoard,
        and their mean, which ranks checkpoints for train.keep_best_checkpoint."""
        s = self.setup
        results = evaluate(lambda texts: self.embedder.encode(params, texts), s.sts_sets, s.retrieval_sets,
                           *prompts(self.config.data))
        return {EVAL_PREFIX + k: v for k, v in results.items()}, {BEST_METRIC: float(np.mean(list(results.values())))}

    def final_scores(self, params) -> dict:
        return {}

    def export(self, params) -> str:
        """output_dir/st, a sentence-transformers folder (process 0 writes)."""
        host_params = sharding.to_host(params)  # every process joins the gather
        out_dir = os.path.join(os.path.abspath(self.config.output_dir), ST_EXPORT_DIR)
        if jax.process_index() == 0:
            save_sentence_transformers_dir(
                self.setup.parts.merge(host_params), out_dir, tokenizer_dir=self.setup.tokenizer_dir,
                pooling=self.config.pooling.mode, normalize=self.config.pooling.normalize,
                max_seq_length=self.config.train.seq_len, prompts=prompts(self.config.data), overwrite=True)
        return out_dir

    def closing_lines(self, train_loss, recent_steps: int, first_eval, last_eval) -> list[str]:
        return fine_tuning_closing_lines(train_loss, recent_steps, first_eval, last_eval)

    def result(self, step: int, completed: bool, train_loss, first_eval, last_eval, export_dir) -> ContrastiveResult:
        if not completed:
            return ContrastiveResult(step, False, train_loss, None, None, None)
        return ContrastiveResult(step, True, train_loss, eval_metrics(first_eval), eval_metrics(last_eval), export_dir)

