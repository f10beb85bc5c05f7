"""The classification run: `train_classifier(config)` from setup to `output_dir/hf`, on the runner
every task shares (neobert_jax.runtime.runner). The eval set runs before the first step, every
`train.eval_every` steps and after the last; the end prints before and after side by side and
writes the last evaluation's predictions to output_dir/eval_predictions.jsonl. Sequence and token
classification differ only in the model, the loss and the evaluation (tag_eval.py).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from neobert_jax.classify.config import BEST_METRIC, validate
from neobert_jax.classify.evaluation import metrics, write_predictions
from neobert_jax.classify.head import IGNORE, TOKEN_CLASSIFICATION, example_losses, save_classifier_dir, token_nll_sum
from neobert_jax.classify.setup import ClassifySetup, setup_classify
from neobert_jax.classify.tag_eval import tag_metrics, write_tag_predictions
from neobert_jax.runtime import executables, optim, sharding
from neobert_jax.runtime.model_init import uses_dropout
from neobert_jax.runtime.reporting import EVAL_PREFIX, eval_metrics, fine_tuning_closing_lines
from neobert_jax.runtime.runner import main_process_print, run_frame, run_task

HF_EXPORT_DIR = "hf"
PREDICTIONS_FILE = "eval_predictions.jsonl"
ROW_KEYS = ("input_ids", "segment_ids", "positions", "labels")  # + "slot_valid" for sequence labels


@dataclasses.dataclass
class ClassifyResult:
    step: int
    completed: bool  # False: stopped by a signal, resumable
    train_loss: float | None  # mean of the last runner.RECENT_STEPS finite steps
    before: dict[str, float] | None  # eval metrics of the starting model (step 0)
    after: dict[str, float] | None  # eval metrics at the last step
    hf_dir: str | None


def train_classifier(config) -> ClassifyResult:
    validate(config)  # from here on the config is only read; what setup decides is setup.resolved
    with run_frame(config) as frame:
        setup = setup_classify(config, main_process_print)
        return run_task(config, setup, ClassifyTask, frame)


def make_classify_step(setup: ClassifySetup, problem_type: str, accum: int, classifier_dropout: float, slots: int):
    """(state, placed packed batch) -> (state, metrics), the state donated. The loss is a sum over the
    rows' examples (sequence labels: the valid slots; tokens: the labelled tokens) divided by the
    global batch's count of them, so it is transformers' mean however the examples are packed, and
    with accum > 1 the micro-batches' losses (and gradients) add up to the whole batch's."""
    parts, mesh, state_sh = setup.parts, setup.mesh, setup.shardings
    dropout = uses_dropout(parts.config) or classifier_dropout > 0
    tokens = problem_type == TOKEN_CLASSIFICATION

    def loss_fn(params, batch, rng, denom):
        logits = parts.merge(params).packed(batch["input_ids"], batch["segment_ids"], batch["positions"], slots,
                                            dropout_rng=rng)
        if tokens:
            return token_nll_sum(logits, batch["labels"]) / denom
        return jnp.sum(example_losses(problem_type, logits, batch["labels"]) * batch["slot_valid"]) / denom

    def train_step(state, batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        rng = step_rng if dropout else None
        counted = batch["labels"] != IGNORE if tokens else batch["slot_valid"]
        denom = jnp.maximum(jnp.sum(counted), 1).astype(jnp.float32)
        if accum == 1:
            loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng, denom)
        else:
            micro = jax.tree.map(lambda x: sharding.split_micro(x, accum, mesh), batch)

            def accumulate(carry, xs):
                micro_batch, index = xs
                micro_rng = None if rng is None else jax.random.fold_in(rng, index)
                loss, grads = jax.value_and_grad(loss_fn)(state.params, micro_batch, micro_rng, denom)
                total = jax.tree.map(jnp.add, carry, (loss, grads))
                return (total[0], jax.lax.with_sharding_constraint(total[1], state_sh.params)), None

            zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, state.params), state_sh.params)
            (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros),
                                            (micro, jnp.arange(accum)))
        new_state, grad_norm = optim.apply_update_if_finite(state, grads, loss, setup.optimizer)
        return new_state, {"loss": loss, "grad_norm": grad_norm,
                           "learning_rate": setup.optimizer.learning_rate(state.hparams,
                                                                           state.step - state.nonfinite_total),
                           "nonfinite_streak": new_state.nonfinite_streak,
                           "nonfinite_total": new_state.nonfinite_total}

    rows = sharding.batch_sharding(mesh)
    keys = ROW_KEYS if tokens else (*ROW_KEYS, "slot_valid")
    return jax.jit(train_step, in_shardings=(state_sh, {k: rows for k in keys}),
                   out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)


def program_settings(config, setup: ClassifySetup) -> dict:
    """The executable cache's settings of the classification programs: the run's
    (executables.run_settings) and what the step closes over besides."""
    return executables.run_settings(config, setup, classifier=config.classifier.to_dict(),
                                    slots=setup.batches.slots, accum=config.train.grad_accum_steps)


class ClassifyTask:
    """Labelled texts (or tagged sentences) in, the eval set's metrics as the eval (before the first
    step too), an HF sequence- (token-) classification dir of the encoder's family out."""

    eval_before_training = True

    def __init__(self, config, setup: ClassifySetup, log):
        self.config, self.setup = config, setup
        self.problem_type = config.classifier.problem_type
        self.tokens = self.problem_type == TOKEN_CLASSIFICATION
        self.export_name = f"HF {'token' if self.tokens else 'sequence'}-classification model"
        cache = executables.for_run(config, program_settings(config, setup), log)
        self._step = cache(make_classify_step(setup, self.problem_type, config.train.grad_accum_steps,
                                              config.classifier.dropout, setup.batches.slots), "classify_train_step")
        self.has_eval = setup.evaluator is not None
        if self.has_eval:
            setup.evaluator.use_cache(cache)
        self.loss_label = f"{self.problem_type} loss"
        self.batch_description = f"{setup.resolved.batch_size} {'sentences' if self.tokens else 'examples'}"
        self.steps_per_epoch = setup.batches.steps_per_epoch
        self.steps_per_call = setup.resolved.steps_per_call
        self.last_logits = None

    def next_batch(self, steps: int):
        batch, counters = next(self.setup.batches)
        return sharding.global_batch(batch, self.setup.mesh), [counters]

    def train_step(self, state, batch, steps: int):
        return self._step(state, batch)

    def data_state(self) -> dict:
        return self.setup.batches.get_state()

    def step_counters(self, metrics: dict, host: dict) -> dict[str, float]:
        return host

    def interval_scalars(self, mean_loss: float, counters: dict, steps: int, elapsed_s: float | None) -> dict:
        if elapsed_s is None:
            return {}
        return {"examples_per_s": counters["examples"] / elapsed_s, "tokens_per_s": counters["tokens"] / elapsed_s}

    def evaluate(self, params) -> tuple[dict, dict]:
        """`eval_<metric>` scalars; the eval loss ranks checkpoints for train.keep_best_checkpoint."""
        evaluator = self.setup.evaluator
        self.last_logits = evaluator.logits(params)
        if self.tokens:
            results = tag_metrics(self.last_logits, evaluator.data, self.setup.eval_gold, self.setup.labels)
        else:
            results = metrics(self.problem_type, self.last_logits, evaluator.data.targets)
        scalars = {EVAL_PREFIX + k: v for k, v in results.items()}
        return scalars, {BEST_METRIC: scalars[BEST_METRIC]}

    def final_scores(self, params) -> dict:
        return {}

    def export(self, params) -> str:
        """output_dir/hf (and the last evaluation's predictions beside it), written by process 0."""
        host_params = sharding.to_host(params)  # every process joins the gather
        root = os.path.abspath(self.config.output_dir)
        out_dir = os.path.join(root, HF_EXPORT_DIR)
        if jax.process_index() == 0:
            save_classifier_dir(self.setup.parts.merge(host_params), out_dir, labels=self.setup.labels,
                                problem_type=self.problem_type, tokenizer_dir=self.setup.tokenizer_dir, overwrite=True)
            predictions = os.path.join(root, PREDICTIONS_FILE)
            if self.last_logits is not None and self.tokens:
                write_tag_predictions(predictions, self.last_logits, self.setup.evaluator.data, self.setup.eval_words,
                                      self.setup.eval_gold, self.setup.labels)
            elif self.last_logits is not None:
                write_predictions(predictions, self.problem_type, self.last_logits,
                                  self.setup.eval_gold, self.setup.labels)
        return out_dir

    def closing_lines(self, train_loss, recent_steps: int, first_eval, last_eval) -> list[str]:
        return fine_tuning_closing_lines(train_loss, recent_steps, first_eval, last_eval)

    def result(self, step: int, completed: bool, train_loss, first_eval, last_eval, export_dir) -> ClassifyResult:
        if not completed:
            return ClassifyResult(step, False, train_loss, None, None, None)
        return ClassifyResult(step, True, train_loss, eval_metrics(first_eval), eval_metrics(last_eval), export_dir)

