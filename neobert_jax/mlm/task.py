"""MLM pretraining: `train(config)` from setup to the exported HF model, on the shared runner
(neobert_jax.runtime.runner: the loop, cadence, stop, resume and summary live there)."""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from neobert_jax.runtime import executables, multistep, sharding
from neobert_jax.runtime.model_init import architecture_of
from neobert_jax.mlm.config import validate
from neobert_jax.runtime.reporting import perplexity
from neobert_jax.mlm.setup import RunSetup, setup_run
from neobert_jax.runtime.runner import NonFiniteLossError, main_process_print, run_frame, run_task
from neobert_jax.mlm.step import make_eval_step, make_train_step
from neobert_jax.runtime.throughput import peak_flops_per_device, train_flops_per_step

__all__ = ["NonFiniteLossError", "RunResult", "train"]

HF_EXPORT_DIR = "hf"


@dataclasses.dataclass
class RunResult:
    step: int
    completed: bool  # False: stopped by a signal, resumable
    train_loss: float | None  # mean of the last runner.RECENT_STEPS finite steps
    eval_loss: float | None
    hf_dir: str | None


def train(config) -> RunResult:
    validate(config)  # from here on the config is only read; what setup decides is setup.resolved
    with run_frame(config) as frame:
        setup = setup_run(config, main_process_print)
        return run_task(config, setup, MlmTask, frame)


class MlmTask:
    """Packed MLM rows in, held-out MLM loss as the eval, an HF dir of the architecture out
    (ModernBertForMaskedLM, or NeoBERT's release format with its remote code)."""

    loss_label = "MLM loss"
    export_name = "HF model"
    eval_before_training = False

    def __init__(self, config, setup: RunSetup, log):
        self.config, self.setup = config, setup
        t, self.resolved = config.train, setup.resolved
        self.steps_per_call = self.resolved.steps_per_call
        cache = executables.for_run(config, executables.run_settings(config, setup), log)
        self._step = cache(make_train_step(setup.parts, setup.optimizer, t, setup.shardings, setup.mesh,
                                           self.steps_per_call), "mlm_train_step")
        self.has_eval = setup.eval_data is not None
        if self.has_eval:
            self.eval_step = cache(make_eval_step(setup.parts, t, setup.shardings.params, setup.mesh), "mlm_eval_step")
            self.eval_start = setup.eval_data.get_state()
        self.peak_flops = peak_flops_per_device(jax.devices()[0].device_kind, t.precision) * jax.device_count()
        self.batch_description = f"{self.resolved.batch_size} rows x {t.seq_len}"

    @property
    def steps_per_epoch(self) -> float:
        """Read when the run ends: a stream's becomes known only once it has been read through."""
        return self.setup.train_data.steps_per_epoch

    def next_batch(self, steps: int) -> tuple[dict, list[dict]]:
        s = self.setup
        if self.steps_per_call == 1:
            return sharding.global_batch(next(s.train_data), s.mesh), [{}]
        local = multistep.stack_batches([next(s.train_data) for _ in range(steps)], self.steps_per_call)
        return sharding.global_batch(local, s.mesh, multistep.stacked_batch_sharding(s.mesh)), [{}] * steps

    def train_step(self, state, batch, steps: int):
        if self.steps_per_call == 1:
            return self._step(state, batch)
        return self._step(state, batch, np.int32(steps))

    def data_state(self) -> dict:
        return self.setup.train_data.get_state()

    def step_counters(self, metrics: dict, host: dict) -> dict[str, float]:
        predicted = int(metrics["predicted_tokens"])
        return {"tokens": int(metrics["real_tokens"]), "predicted_tokens": predicted,
                "flops": train_flops_per_step(self.setup.parts.config, self.resolved.batch_size,
                                              self.config.train.seq_len, predicted)}

    def interval_scalars(self, mean_loss: float, counters: dict, steps: int,
                         elapsed_s: float | None) -> dict[str, float]:
        row_tokens = self.resolved.batch_size * self.config.train.seq_len
        scalars = {"perplexity": perplexity(mean_loss) if math.isfinite(mean_loss) else float("nan"),
                   "masked_tokens": counters["predicted_tokens"] / steps,
                   "packing_efficiency": counters["tokens"] / (steps * row_tokens)}
        if elapsed_s is not None:
            scalars["tokens_per_s"] = counters["tokens"] / elapsed_s
            scalars["mfu"] = counters["flops"] / elapsed_s / self.peak_flops if self.peak_flops else 0.0
        return scalars

    def evaluate(self, params) -> tuple[dict, dict]:
        """Loss over up to `eval_batches` eval batches, normalized by all their predicted tokens."""
        data = self.setup.eval_data
        data.set_state(self.eval_start)
        nll_sum, count = 0.0, 0
        for _, local in zip(range(self.config.train.eval_batches), data):
            nll, n = self.eval_step(params, sharding.global_batch(local, self.setup.mesh))
            nll_sum, count = nll_sum + nll, count + n
        loss = float(nll_sum) / max(int(count), 1)
        return {"eval_loss": loss, "eval_perplexity": perplexity(loss)}, {"eval_loss": loss}

    def final_scores(self, params) -> dict:
        """The pseudo-perplexity of setup.pseudo_rows (train.pseudo_perplexity_documents), through the eval step."""
        rows = self.setup.pseudo_rows
        if rows is None:
            return {}
        s, global_rows = self.setup, self.resolved.batch_size
        nll_sum, count = 0.0, 0
        for local in rows.batches(global_rows, sharding.process_row_range(s.mesh, global_rows)):
            nll, n = self.eval_step(params, sharding.global_batch(local, s.mesh))
            nll_sum, count = nll_sum + float(nll), count + int(n)
        nll = nll_sum / max(count, 1)
        return {"eval_pseudo_perplexity": perplexity(nll), "eval_pseudo_nll": nll, "eval_pseudo_tokens": count,
                "eval_pseudo_documents": rows.documents}

    def export(self, params) -> str | None:
        """output_dir/hf through the architecture's HF writer, as convert/flax_to_torch.py (process 0 writes)."""
        if not self.config.train.export_hf:
            return None
        host_params = sharding.to_host(params)  # every process joins the gather
        out_dir = os.path.join(os.path.abspath(self.config.output_dir), HF_EXPORT_DIR)
        if jax.process_index() == 0:
            save_hf = architecture_of(self.setup.parts.config).save_hf
            save_hf(self.setup.parts.merge(host_params), out_dir, tokenizer_dir=self.setup.tokenizer_dir, overwrite=True)
        return out_dir

    def closing_lines(self, train_loss: float | None, recent_steps: int, first_eval, last_eval: dict | None
                      ) -> list[str]:
        lines = []
        if train_loss is not None:
            lines.append(f"Final Student Train Loss: {train_loss:.4f} (mean of the last {recent_steps} steps; "
                         f"perplexity {perplexity(train_loss):.2f})")
        if last_eval is not None:
            lines.append(f"Final Student Eval Loss: {last_eval['eval_loss']:.4f} "
                         f"(perplexity {last_eval['eval_perplexity']:.2f})")
        if last_eval is not None and "eval_pseudo_perplexity" in last_eval:
            lines.append(f"Final Student Pseudo-Perplexity: {last_eval['eval_pseudo_perplexity']:.2f} "
                         f"({last_eval['eval_pseudo_tokens']:,} tokens of {last_eval['eval_pseudo_documents']} eval "
                         "documents, each masked alone)")
        return lines

    def result(self, step: int, completed: bool, train_loss, first_eval, last_eval, export_dir) -> RunResult:
        return RunResult(step, completed, train_loss, last_eval["eval_loss"] if last_eval else None, export_dir)
