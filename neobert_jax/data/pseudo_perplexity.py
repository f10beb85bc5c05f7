"""Pseudo-perplexity rows (Salazar et al., 2020): every token of a document masked alone, in turn,
as MLM eval batches, so the run's own compiled eval step scores them.

A document of n tokens needs n copies, each with one [MASK]. Copies of one document are packed side by
side into a row as separate segments (the packed rows' attention mask keeps them apart), so a short
document does not cost a whole row per token. What the eval step sums over these rows is the
pseudo-log-likelihood; `neobert_jax.hf.mlm_eval.pseudo_perplexity` computes the same from an export
with torch, one unpadded copy at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from neobert_jax.data.masking import IGNORE_INDEX


@dataclasses.dataclass(frozen=True)
class PseudoRows:
    """All copies of the scored documents: (R, T) arrays in the MLM batch contract, plus
    `masked_positions`/`masked_labels` (R, max_predictions)."""

    arrays: dict[str, np.ndarray]
    pad_id: int
    documents: int

    def batches(self, global_batch_size: int, row_range: tuple[int, int]) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows [lo, hi) of each global batch; the last batch is padded with rows that
        predict nothing."""
        total = len(self.arrays["input_ids"])
        lo, hi = row_range
        fills = {"input_ids": self.pad_id, "labels": IGNORE_INDEX, "masked_labels": IGNORE_INDEX}
        for start in range(0, total, global_batch_size):
            batch = {}
            for key, value in self.arrays.items():
                part = value[start + lo:start + hi]
                padding = np.full((hi - lo - len(part),) + value.shape[1:], fills.get(key, 0), value.dtype)
                batch[key] = np.concatenate([part, padding])
            yield batch


def pseudo_rows(documents: Sequence[np.ndarray], *, seq_len: int, max_predictions: int, cls_id: int, sep_id: int,
                pad_id: int, mask_id: int) -> PseudoRows:
    """Every token of each of `documents` (token ids without specials, 1 to seq_len - 2 each) masked alone."""
    rows: list[list[tuple[np.ndarray, int]]] = []  # per row: (document, masked body index) per copy
    for doc in documents:
        if not 0 < len(doc) <= seq_len - 2:
            raise ValueError(f"a pseudo-perplexity document has {len(doc)} tokens, expected 1 to {seq_len - 2}")
        per_row = min(seq_len // (len(doc) + 2), max_predictions)
        copies = [(doc, j) for j in range(len(doc))]
        rows.extend(copies[i:i + per_row] for i in range(0, len(copies), per_row))
    shape = (len(rows), seq_len)
    out = {"input_ids": np.full(shape, pad_id, np.int32), "segment_ids": np.zeros(shape, np.int32),
           "positions": np.zeros(shape, np.int32), "labels": np.full(shape, IGNORE_INDEX, np.int32),
           "masked_positions": np.zeros((len(rows), max_predictions), np.int32),
           "masked_labels": np.full((len(rows), max_predictions), IGNORE_INDEX, np.int32)}
    for r, copies in enumerate(rows):
        start = 0
        for k, (doc, j) in enumerate(copies):
            length = len(doc) + 2
            span = slice(start, start + length)
            out["input_ids"][r, span] = np.concatenate([[cls_id], doc, [sep_id]])
            out["segment_ids"][r, span] = k + 1
            out["positions"][r, span] = np.arange(length)
            masked = start + 1 + j
            out["input_ids"][r, masked] = mask_id
            out["labels"][r, masked] = doc[j]
            out["masked_positions"][r, k] = masked
            out["masked_labels"][r, k] = doc[j]
            start += length
    return PseudoRows(out, pad_id, len(documents))
