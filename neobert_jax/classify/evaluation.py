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

from neobert_jax.classify.data import Encoded
from neobert_jax.classify.packing import pack_rows, row_arrays
from neobert_jax.runtime import sharding

ROW_KEYS = ("input_ids", "segment_ids", "positions")


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
    """Logits of an encoded eval set, in the order of its examples, from the model split over the mesh.

    The examples, `batch_size` at a time in order, are packed into rows as training packs them (one
    planned row count: one compiled shape). Sequence labels come back per slot; token labels
    (`select`) as each example's own stretch of its row.
    """

    def __init__(self, parts, mesh: Mesh, data: Encoded, *, batch_size: int, seq_len: int, pad_id: int,
                 select=None):
        """select: (each example's (tokens, labels) logits, their example indices) -> what to keep of
        each (token classification: the logits at its words' first sub-tokens)."""
        self.mesh, self.data, self.seq_len, self.pad_id, self.select = mesh, data, seq_len, pad_id, select
        divisor = sharding.batch_rows_divisor(mesh)
        lengths = [len(ids) for ids in data.ids]
        self.chunks = [[[start + i for i in row] for row in
                        pack_rows(lengths[start:start + batch_size], seq_len, pack=True)]
                       for start in range(0, len(data), batch_size)]
        self.rows = -(-max(map(len, self.chunks), default=1) // divisor) * divisor
        self.slots = max((len(row) for chunk in self.chunks for row in chunk), default=1)

        def logits(params, batch):
            return parts.merge(params).packed(batch["input_ids"], batch["segment_ids"], batch["positions"],
                                              self.slots)

        self._logits = jax.jit(logits, in_shardings=(sharding.param_shardings(parts.abstract_params, parts.axes, mesh),
                                                     {k: sharding.batch_sharding(mesh) for k in ROW_KEYS}),
                               out_shardings=sharding.replicated(mesh))

    def use_cache(self, cache) -> None:
        """Serve the logits program from a run's executable cache (runtime.executables.for_run)."""
        self._logits = cache(self._logits, "classify_logits", slots=self.slots)

    def logits(self, params) -> np.ndarray | list:
        lo, hi = sharding.process_row_range(self.mesh, self.rows)
        out = [None] * len(self.data)
        for chunk in self.chunks:
            own = chunk[lo:hi] + [[]] * (hi - lo - len(chunk[lo:hi]))
            batch = sharding.global_batch(row_arrays(self.data.ids, own, self.seq_len, self.pad_id), self.mesh)
            logits_R = np.asarray(jax.device_get(self._logits(params, batch)))  # (R, slots, L) or (R, T, L)
            examples, pieces = [], []
            for r, row in enumerate(chunk):
                start = 0
                for slot, example in enumerate(row):
                    end = start + len(self.data.ids[example])
                    examples.append(example)
                    pieces.append(logits_R[r, slot] if self.select is None else logits_R[r, start:end])
                    start = end
            if self.select is not None:
                pieces = self.select(pieces, examples)
            for example, piece in zip(examples, pieces):
                out[example] = piece
        return out if self.select is not None else np.stack(out)
