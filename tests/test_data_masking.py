"""Masking: HF collator statistics (30%, 80/10/10), never specials or padding, bounded and reproducible."""

import numpy as np
import pytest

from neobert_jax.data.masking import IGNORE_INDEX, Masker, max_predictions

UNK, CLS, SEP, PAD, MASK = range(5)
VOCAB = 1000


def make_masker(seq_len, mlm_probability=0.30, mask_all=False):
    is_special = np.zeros(VOCAB, dtype=bool)
    is_special[[UNK, CLS, SEP, PAD, MASK]] = True
    m = max_predictions(seq_len, mlm_probability)
    return Masker(mlm_probability, mask_all, MASK, is_special, np.flatnonzero(~is_special), m)


def packed_rows(batch, seq_len, seed=0):
    """Rows of 1-4 `[CLS] text [SEP]` documents then padding; texts hold a few literal [UNK]s."""
    rng = np.random.default_rng(seed)
    ids = np.full((batch, seq_len), PAD, np.int32)
    seg = np.zeros((batch, seq_len), np.int32)
    for r in range(batch):
        cuts = np.sort(rng.choice(np.arange(3, seq_len - 8, 3), rng.integers(1, 4), replace=False))
        bounds = [0, *cuts, seq_len - int(rng.integers(0, 8))]
        for s, (a, b) in enumerate(zip(bounds, bounds[1:]), start=1):
            ids[r, a], ids[r, a + 1 : b - 1], ids[r, b - 1] = CLS, rng.integers(5, VOCAB, b - a - 2), SEP
            seg[r, a:b] = s
    ids[(rng.random(ids.shape) < 0.01) & (seg > 0)] = UNK
    return {"input_ids": ids, "segment_ids": seg}


def test_masking_statistics_match_the_hf_recipe():
    seq_len = 128
    rows = packed_rows(256, seq_len)
    out = make_masker(seq_len)(rows, np.random.default_rng(0))
    original, masked = rows["input_ids"], out["labels"] != IGNORE_INDEX
    maskable = (rows["segment_ids"] > 0) & (original > MASK)
    assert not (masked & ~maskable).any()  # never a special token or padding
    assert abs(masked.sum() / maskable.sum() - 0.30) < 0.005
    assert np.all(np.abs(masked.sum(1) - 0.30 * maskable.sum(1)) < 1)  # per row: the expected count
    assert np.array_equal(out["labels"][masked], original[masked])
    assert np.array_equal(out["input_ids"][~masked], original[~masked])
    became = out["input_ids"][masked]
    kept = became == original[masked]
    assert abs(np.mean(became == MASK) - 0.8) < 0.02
    assert abs(np.mean(kept) - 0.1) < 0.015
    assert abs(np.mean((became != MASK) & ~kept) - 0.1) < 0.015
    assert np.all((became > MASK) | (became == MASK))  # no other special token is ever inserted


def test_masked_positions_list_exactly_the_labelled_tokens():
    seq_len = 64
    rows = packed_rows(32, seq_len, seed=1)
    out = make_masker(seq_len)(rows, np.random.default_rng(1))
    m = max_predictions(seq_len, 0.30)
    assert out["masked_positions"].shape == out["masked_labels"].shape == (32, m)
    for r in range(32):
        labelled = np.flatnonzero(out["labels"][r] != IGNORE_INDEX)
        count = len(labelled)
        assert 0 < count <= m
        assert np.array_equal(out["masked_positions"][r, :count], labelled)  # ascending
        assert np.array_equal(out["masked_labels"][r, :count], out["labels"][r, labelled])
        assert not out["masked_positions"][r, count:].any()
        assert np.all(out["masked_labels"][r, count:] == IGNORE_INDEX)
    assert all(out[k].dtype == np.int32 for k in ("input_ids", "labels", "masked_positions", "masked_labels"))


def test_mask_all_and_full_probability():
    seq_len = 64
    rows = packed_rows(16, seq_len, seed=2)
    out = make_masker(seq_len, mask_all=True)(rows, np.random.default_rng(0))
    assert np.all(out["input_ids"][out["labels"] != IGNORE_INDEX] == MASK)
    ids = np.arange(seq_len, dtype=np.int32)[None] + 10
    ids[0, [0, -1]] = CLS, SEP
    one_document = {"input_ids": ids, "segment_ids": np.ones((1, seq_len), np.int32)}
    out = make_masker(seq_len, mlm_probability=1.0)(one_document, np.random.default_rng(0))
    assert np.array_equal(out["masked_positions"][0], np.arange(1, seq_len - 1))  # M = T - 2, all used


def test_same_generator_state_same_masks():
    rows = packed_rows(8, 64, seed=3)
    masker = make_masker(64)
    a, b, c = (masker(rows, np.random.default_rng(s)) for s in (7, 7, 8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["labels"], c["labels"])


@pytest.mark.parametrize("seq_len, p, m", [(512, 0.30, 153), (128, 0.15, 19), (16, 1.0, 14), (8, 0.01, 1)])
def test_max_predictions(seq_len, p, m):
    assert max_predictions(seq_len, p) == m
