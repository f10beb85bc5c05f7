"""MLM masking of packed rows, matching HF DataCollatorForLanguageModeling's 80/10/10 recipe.

One difference, on purpose: instead of an independent coin per token, a row gets exactly
`mlm_probability * maskable tokens` masks (stochastically rounded), drawn uniformly without
replacement. Every token still has the same chance of being masked, but the count per row is
bounded, so the fixed-size `masked_positions` array of the masked-only head never drops a mask.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

IGNORE_INDEX = -100  # torch CrossEntropyLoss's ignore_index: the label of unmasked tokens
_NEVER_PICKED = 2.0  # sort key above any uniform draw: keeps special tokens and padding unmasked


def max_predictions(seq_len: int, mlm_probability: float) -> int:
    """M, the most masks a row can get: a row has at most seq_len - 2 maskable tokens."""
    return max(1, math.ceil(round(mlm_probability * (seq_len - 2), 6)))


@dataclasses.dataclass(frozen=True)
class Masker:
    mlm_probability: float
    mask_all: bool  # every picked token becomes [MASK] (no 10% random / 10% kept)
    mask_id: int
    is_special: np.ndarray  # (V,) bool: tokens never picked and never inserted
    ordinary_ids: np.ndarray  # the other ids: the 10% random replacements are drawn from these
    max_predictions: int

    @classmethod
    def for_tokenizer(cls, tokenizer, special_ids: np.ndarray, seq_len: int, mlm_probability: float, mask_all: bool):
        is_special = np.zeros(len(tokenizer), dtype=bool)
        is_special[special_ids] = True
        m = max_predictions(seq_len, mlm_probability)
        return cls(mlm_probability, mask_all, tokenizer.mask_token_id, is_special, np.flatnonzero(~is_special), m)

    def _draws(self, rng: np.random.Generator, batch: int, seq_len: int) -> tuple[np.ndarray, ...]:
        m = self.max_predictions
        count_u, keys, action = rng.random(batch), rng.random((batch, seq_len)), rng.random((batch, m))
        random = None if self.mask_all else self.ordinary_ids[rng.integers(len(self.ordinary_ids), size=(batch, m))]
        return count_u, keys, action, random

    def __call__(self, rows: dict, rng: np.random.Generator | list[np.random.Generator]) -> dict:
        """Adds masked `input_ids`, `labels`, `masked_positions` and `masked_labels` to packed rows.

        rng: one generator for the batch, or one per row (a row's masks then depend on its own only).
        """
        ids_BT = rows["input_ids"]
        batch, seq_len = ids_BT.shape
        if isinstance(rng, np.random.Generator):
            count_u_B, keys_u_BT, action_BM, random_BM = self._draws(rng, batch, seq_len)
        else:
            per_row = [self._draws(row_rng, 1, seq_len) for row_rng in rng]
            count_u_B, keys_u_BT, action_BM, random_BM = (
                None if parts[0] is None else np.concatenate(parts) for parts in zip(*per_row))
        maskable_BT = (rows["segment_ids"] > 0) & ~self.is_special[ids_BT]
        target_B = self.mlm_probability * maskable_BT.sum(axis=1)
        count_B = np.minimum(np.floor(target_B + count_u_B), np.ceil(np.round(target_B, 6))).astype(np.int64)

        keys_BT = np.where(maskable_BT, keys_u_BT, _NEVER_PICKED)
        m = self.max_predictions
        picked_BM = np.argpartition(keys_BT, m - 1, axis=1)[:, :m]  # the m lowest keys, unordered
        picked_BM = np.take_along_axis(picked_BM, np.argsort(np.take_along_axis(keys_BT, picked_BM, 1), 1), 1)
        valid_BM = np.arange(m) < count_B[:, None]  # the count_B lowest keys: a uniform draw
        positions_BM = np.sort(np.where(valid_BM, picked_BM, seq_len), axis=1)  # ascending, then the unused
        valid_BM = positions_BM < seq_len
        positions_BM = np.where(valid_BM, positions_BM, 0).astype(np.int32)

        original_BM = np.take_along_axis(ids_BT, positions_BM, axis=1)
        replacement_BM = np.full_like(original_BM, self.mask_id)
        if not self.mask_all:
            replacement_BM = np.where(action_BM < 0.8, self.mask_id, np.where(action_BM < 0.9, random_BM, original_BM))
        masked_ids_BT = ids_BT.copy()
        labels_BT = np.full_like(ids_BT, IGNORE_INDEX)
        row_BM = np.broadcast_to(np.arange(batch)[:, None], positions_BM.shape)
        masked_ids_BT[row_BM[valid_BM], positions_BM[valid_BM]] = replacement_BM[valid_BM]
        labels_BT[row_BM[valid_BM], positions_BM[valid_BM]] = original_BM[valid_BM]
        return {
            **rows,
            "input_ids": masked_ids_BT,
            "labels": labels_BT,
            "masked_positions": positions_BM,
            "masked_labels": np.where(valid_BM, original_BM, IGNORE_INDEX).astype(np.int32),
        }

