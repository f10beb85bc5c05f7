"""Packing: every row boundary isolates documents, and every token of every document comes out once."""

import numpy as np
import pytest

from neobert_jax.data.packing import assemble_rows, plan_rows
from neobert_jax.data.sources import ReadStats
from neobert_jax.data.token_store import TokenStore

CLS, SEP, PAD = 1, 2, 0
IDS = dict(cls_id=CLS, sep_id=SEP, pad_id=PAD)


def make_store(lengths, seed=0):
    """Documents of random ids >= 5 (never a special id), in one or two shards."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(5, 30000, size=n).astype(np.uint16) for n in lengths]
    half = len(docs) // 2
    shards = [np.concatenate(docs[:half] or [np.zeros(0, np.uint16)]), np.concatenate(docs[half:])]
    return TokenStore(shards, [np.array(lengths[:half]), np.array(lengths[half:])], ReadStats()), docs


def paragraph_lengths(n, seed=0):
    """Token counts like a corpus of sentences and paragraphs, with a few long documents."""
    return np.clip(np.random.default_rng(seed).lognormal(3.6, 0.9, size=n).astype(int), 1, 1500)


def unpack(batch, seq_len):
    """Checks the layout of every row and returns the text of every chunk."""
    chunks = []
    for ids, seg, pos in zip(batch["input_ids"], batch["segment_ids"], batch["positions"]):
        used = int(np.count_nonzero(seg))
        assert np.all(seg[used:] == 0) and np.all(pos[used:] == 0) and np.all(ids[used:] == PAD)
        starts = np.flatnonzero(np.diff(seg[:used], prepend=0))
        assert np.array_equal(seg[starts], np.arange(1, len(starts) + 1))  # 1..n, in order, no gaps
        for start, end in zip(starts, [*starts[1:], used]):
            assert np.array_equal(pos[start:end], np.arange(end - start))  # restart at every [CLS]
            assert ids[start] == CLS and ids[end - 1] == SEP and end - start <= seq_len
            body = ids[start + 1 : end - 1]
            assert not np.isin(body, [CLS, SEP, PAD]).any()
            chunks.append(tuple(body))
    return chunks


def expected_chunks(docs, seq_len):
    body = seq_len - 2
    return sorted(tuple(d[i : i + body]) for d in docs for i in range(0, len(d), body))


@pytest.mark.parametrize("method", ["first_fit", "best_fit", "none"])
def test_rows_isolate_documents_and_lose_nothing(method):
    seq_len = 128
    lengths = paragraph_lengths(600)
    store, docs = make_store(list(lengths))
    plan = plan_rows(np.arange(len(docs)), lengths, seq_len, method)
    batch = assemble_rows(plan, store, np.arange(plan.num_rows), **IDS)
    assert batch["input_ids"].shape == (plan.num_rows, seq_len)
    assert all(a.dtype == np.int32 for a in batch.values())
    assert sorted(unpack(batch, seq_len)) == expected_chunks(docs, seq_len)
    assert plan.tokens == int(np.count_nonzero(batch["segment_ids"]))
    assert plan.documents_split == int(np.sum(lengths > seq_len - 2)) > 0
    if method == "none":
        assert np.all(batch["segment_ids"].max(axis=1) == 1)
    else:
        assert plan.efficiency >= 0.95


def test_paragraph_corpus_packs_above_95_percent_at_512():
    lengths = paragraph_lengths(20_000, seed=1)
    for method in ("first_fit", "best_fit"):
        assert plan_rows(np.arange(len(lengths)), lengths, 512, method).efficiency >= 0.98


def test_long_document_is_split_into_row_sized_chunks():
    store, docs = make_store([25, 1000, 7])
    plan = plan_rows(np.array([1]), np.array([1000]), 400, "none")
    assert plan.documents_split == 1 and list(plan.chunk_length) == [398, 398, 204]
    batch = assemble_rows(plan, store, np.arange(3), **IDS)
    assert np.concatenate([batch["input_ids"][r, 1 : n + 1] for r, n in enumerate([398, 398, 204])]).tolist() == docs[
        1
    ].tolist()


def test_first_fit_takes_the_first_row_and_best_fit_the_tightest():
    # chunk sizes with [CLS]/[SEP]: 7, 8, 4 into rows of 12: the 4 fits both rows (5 and 4 free)
    lengths = np.array([5, 6, 2])
    first = plan_rows(np.arange(3), lengths, 12, "first_fit")
    best = plan_rows(np.arange(3), lengths, 12, "best_fit")
    assert first.row_offsets.tolist() == [0, 2, 3] and first.chunk_doc.tolist() == [0, 2, 1]
    assert best.row_offsets.tolist() == [0, 1, 3] and best.chunk_doc.tolist() == [0, 1, 2]


def test_padding_rows_and_empty_documents():
    store, _ = make_store([10, 0, 20])
    plan = plan_rows(np.arange(3), np.array([10, 0, 20]), 64, "best_fit")
    assert (plan.documents, plan.documents_empty, plan.num_rows) == (2, 1, 1)
    batch = assemble_rows(plan, store, np.array([0, -1]), **IDS)
    assert np.all(batch["input_ids"][1] == PAD) and not batch["segment_ids"][1].any()
    assert batch["segment_ids"][0].max() == 2


def test_unknown_method_and_tiny_rows_are_refused():
    with pytest.raises(ValueError, match="packing must be one of"):
        plan_rows(np.arange(1), np.array([3]), 16, "greedy")
    with pytest.raises(ValueError, match="leaves no room"):
        plan_rows(np.arange(1), np.array([3]), 2, "none")
