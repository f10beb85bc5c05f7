"""The eval set's logits (the sharded model, replicated back) and their metrics, computed with
scikit-learn and scipy: accuracy, macro-F1 and Matthews correlation (single-label), micro and
macro F1 (multi-label, a label predicted where its logit is > 0), Pearson and Spearman (regression);
each beside the eval loss, the training loss of that problem type."""

from __future__ import annotations

import json
import warnings

import jax
import numpy as np
from jax.sharding import Mesh

from neobert_jax.classify.data import Encoded, pad_rows
from neobert_jax.runtime import sharding


def metrics(problem_type: str, logits_NL: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    from scipy import stats
    from sklearn import metrics as sk

    logits_NL = logits_NL.astype(np.float64)
    if problem_type == "single_label_classification":
        shifted = logits_NL - logits_NL.max(1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        predicted = logits_NL.argmax(1)
        return {"loss": float(-log_probs[np.arange(len(targets)), targets].mean()),
                "accuracy": float(sk.accuracy_score(targets, predicted)),
                "macro_f1": float(sk.f1_score(targets, predicted, average="macro")),
                "mcc": float(sk.matthews_corrcoef(targets, predicted))}
    if problem_type == "multi_label_classification":
        bce = np.maximum(logits_NL, 0) - logits_NL * targets + np.log1p(np.exp(-np.abs(logits_NL)))
        predicted = (logits_NL > 0).astype(int)
        return {"loss": float(bce.mean()),
                "micro_f1": float(sk.f1_score(targets, predicted, average="micro", zero_division=0)),
                "macro_f1": float(sk.f1_score(targets, predicted, average="macro", zero_division=0))}
    values = logits_NL[:, 0]
    with warnings.catch_warnings():  # constant predictions (an untrained head) give nan, said as nan
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return {"loss": float(np.mean((values - targets) ** 2)),
                "pearson": float(stats.pearsonr(values, targets)[0]),
                "spearman": float(stats.spearmanr(values, targets)[0])}


def predictions(problem_type: str, logits_NL: np.ndarray, labels: list[str]) -> list:
    """Each example's prediction as the eval file states labels: a name, a list of names, a number."""
    if problem_type == "single_label_classification":
        return [labels[i] for i in logits_NL.argmax(1)]
    if problem_type == "multi_label_classification":
        return [[labels[j] for j in np.flatnonzero(row > 0)] for row in logits_NL]
    return [float(v) for v in logits_NL[:, 0]]


def write_predictions(path: str, problem_type: str, logits_NL: np.ndarray, gold: list, labels: list[str]) -> None:
    """One JSON line per eval example: its label, the prediction and the logits."""
    with open(path, "w") as f:
        for label, predicted, row in zip(gold, predictions(problem_type, logits_NL, labels), logits_NL):
            f.write(json.dumps({"label": label, "prediction": predicted, "logits": row.tolist()}) + "\n")


class Evaluator:
    """Logits of an encoded eval set, batches of `batch_size` rows (a multiple of the mesh's batch
    shards; the last one filled with one-token rows) split over the mesh."""

    def __init__(self, parts, mesh: Mesh, data: Encoded, *, batch_size: int, seq_len: int, pad_id: int, cls_id: int,
                 select=None):
        """select: (a batch's logits, its example indices) -> what to keep of each example (token
        classification: the logits at its words' first sub-tokens), instead of its whole row."""
        self.mesh, self.data, self.seq_len, self.pad_id, self.cls_id = mesh, data, seq_len, pad_id, cls_id
        self.select = select
        divisor = sharding.batch_rows_divisor(mesh)
        self.rows = -(-batch_size // divisor) * divisor
        rows_sh = sharding.batch_sharding(mesh)
        params_sh = sharding.param_shardings(parts.abstract_params, parts.axes, mesh)

        def logits(params, batch):
            return parts.merge(params)(batch["input_ids"], batch["attention_mask"])

        self._logits = jax.jit(logits,
                               in_shardings=(params_sh, {"input_ids": rows_sh, "attention_mask": rows_sh}),
                               out_shardings=sharding.replicated(mesh))

    def logits(self, params) -> np.ndarray | list:
        n, out = len(self.data), []
        lo, hi = sharding.process_row_range(self.mesh, self.rows)
        filler = np.asarray([self.cls_id], np.int32)
        for start in range(0, n, self.rows):
            rows = [self.data.ids[i] if i < n else filler for i in range(start + lo, start + hi)]
            batch = sharding.global_batch(pad_rows(rows, self.seq_len, self.pad_id), self.mesh)
            logits = np.asarray(jax.device_get(self._logits(params, batch)))[:min(self.rows, n - start)]
            if self.select is None:
                out.append(logits)
            else:
                out += self.select(logits, range(start, start + len(logits)))
        return np.concatenate(out) if self.select is None else out
