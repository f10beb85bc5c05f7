"""Packing documents into fixed-length rows, planned once from lengths alone.

A plan assigns every chunk of every document to a row before training starts. That makes the rows
per epoch exact (the LR schedule needs it), identical on every process (each can shard the same
plan), and lets a batch be assembled with a handful of vectorized numpy gathers. Grain's online
packers (`FirstFitPackIterDataset`...) pack with per-element Python work, far below a GPU step's appetite
(scripts/bench_data.py), and cannot tell the epoch length up front, so they are not used here.

Each chunk becomes `[CLS] tokens [SEP]`; documents longer than a row are split into row-sized
chunks (never truncated). In a row, segment ids number the chunks 1..n (0 = padding) and
positions restart at 0 on every [CLS].
"""

from __future__ import annotations

import dataclasses

import numpy as np

PACKING_METHODS = ("first_fit", "best_fit", "none")
SPECIALS_PER_CHUNK = 2  # [CLS] and [SEP]


@dataclasses.dataclass(frozen=True)
class PackPlan:
    """Rows as ranges of chunks: row r holds chunks row_offsets[r]:row_offsets[r+1]."""

    seq_len: int
    row_offsets: np.ndarray  # (R+1,) int64
    chunk_doc: np.ndarray  # (C,) int64 document index in the token store
    chunk_start: np.ndarray  # (C,) int64 first token of the chunk inside its document
    chunk_length: np.ndarray  # (C,) int64 tokens of the chunk, without [CLS]/[SEP]
    documents: int  # documents planned (non-empty)
    documents_split: int  # documents longer than a row, cut into several chunks
    documents_empty: int  # documents with no tokens at all, skipped

    @property
    def num_rows(self) -> int:
        return len(self.row_offsets) - 1

    @property
    def tokens(self) -> int:
        """Non-padding tokens in all rows, [CLS]/[SEP] included."""
        return int(self.chunk_length.sum()) + SPECIALS_PER_CHUNK * len(self.chunk_length)

    @property
    def efficiency(self) -> float:
        """Fraction of row slots holding a token rather than padding."""
        return self.tokens / max(1, self.num_rows * self.seq_len)


def plan_rows(doc_ids: np.ndarray, doc_lengths: np.ndarray, seq_len: int, method: str) -> PackPlan:
    """Chunks the documents (in the given order) and assigns chunks to rows with `method`."""
    if method not in PACKING_METHODS:
        raise ValueError(f"packing must be one of {PACKING_METHODS}, got {method!r}")
    body = seq_len - SPECIALS_PER_CHUNK
    if body < 1:
        raise ValueError(f"seq_len {seq_len} leaves no room for text between [CLS] and [SEP]")
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    chunks_per_doc = -(-doc_lengths // body)  # ceil; 0 for empty documents
    chunk_doc = np.repeat(doc_ids, chunks_per_doc)
    first_chunk = np.repeat(np.cumsum(chunks_per_doc) - chunks_per_doc, chunks_per_doc)
    chunk_start = (np.arange(len(chunk_doc)) - first_chunk) * body
    chunk_length = np.minimum(np.repeat(doc_lengths, chunks_per_doc) - chunk_start, body)
    sizes = (chunk_length + SPECIALS_PER_CHUNK).tolist()
    if method == "none":
        chunk_row = np.arange(len(sizes), dtype=np.int64)
    elif method == "first_fit":
        chunk_row = _first_fit(sizes, seq_len)
    else:
        chunk_row = _best_fit(sizes, seq_len)
    order = np.argsort(chunk_row, kind="stable")  # keeps the input order of chunks inside a row
    num_rows = int(chunk_row.max()) + 1 if len(sizes) else 0
    row_offsets = np.concatenate([[0], np.cumsum(np.bincount(chunk_row, minlength=num_rows))]).astype(np.int64)
    return PackPlan(
        seq_len=seq_len,
        row_offsets=row_offsets,
        chunk_doc=chunk_doc[order],
        chunk_start=chunk_start[order],
        chunk_length=chunk_length[order],
        documents=int(np.count_nonzero(doc_lengths)),
        documents_split=int(np.count_nonzero(chunks_per_doc > 1)),
        documents_empty=int(np.count_nonzero(doc_lengths == 0)),
    )


def _first_fit(sizes: list[int], capacity: int) -> np.ndarray:
    """Each chunk goes to the lowest-numbered row with room (a max segment tree over free space).

    First-fit leaves at most one row half empty, so 2 * total / capacity + 1 rows always suffice.
    """
    max_rows = 2 * sum(sizes) // capacity + 2
    leaves = 1 << (max_rows - 1).bit_length()
    free = [capacity] * (2 * leaves)  # free[1] is the root; leaves start at index `leaves`
    rows = []
    for size in sizes:
        node = 1
        while node < leaves:
            node = 2 * node if free[2 * node] >= size else 2 * node + 1
        rows.append(node - leaves)
        free[node] -= size
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return np.asarray(rows, dtype=np.int64)


def _best_fit(sizes: list[int], capacity: int) -> np.ndarray:
    """Each chunk goes to the open row whose free space fits it most tightly.

    Open rows are bucketed by free space; bit f of `nonempty` says bucket f has a row, so the
    tightest fit is the lowest set bit at or above the chunk size.
    """
    smallest = min(sizes, default=capacity)
    buckets: list[list[int]] = [[] for _ in range(capacity + 1)]
    nonempty = 0
    num_rows = 0
    rows = []
    for size in sizes:
        candidates = nonempty >> size
        if candidates:
            free = size + (candidates & -candidates).bit_length() - 1
            bucket = buckets[free]
            row = bucket.pop()
            if not bucket:
                nonempty ^= 1 << free
        else:
            free, row = capacity, num_rows
            num_rows += 1
        rows.append(row)
        free -= size
        if free >= smallest:  # rows that cannot take even the smallest chunk are closed
            if not buckets[free]:
                nonempty |= 1 << free
            buckets[free].append(row)
    return np.asarray(rows, dtype=np.int64)


def assemble_rows(plan: PackPlan, store, row_ids: np.ndarray, *, cls_id: int, sep_id: int, pad_id: int) -> dict:
    """Builds rows `row_ids` of the plan (-1 = an all-padding row) as int32 (B, T) arrays.

    Vectorized over all chunks of the batch: every output token is addressed by its chunk and its
    position inside the chunk, then gathered from the token store in one go.
    """
    seq_len = plan.seq_len
    row_ids = np.asarray(row_ids, dtype=np.int64)
    real = row_ids >= 0
    first = np.where(real, plan.row_offsets[np.maximum(row_ids, 0)], 0)
    counts = np.where(real, plan.row_offsets[np.maximum(row_ids, 0) + 1] - first, 0)
    batch_row = np.repeat(np.arange(len(row_ids)), counts)  # (K,) for each chunk of the batch
    row_base = np.repeat(np.cumsum(counts) - counts, counts)  # (K,) its row's first chunk
    index_in_row = np.arange(len(batch_row)) - row_base
    chunk = np.repeat(first, counts) + index_in_row  # (K,) index into the plan's chunk arrays
    sizes = plan.chunk_length[chunk] + SPECIALS_PER_CHUNK
    starts = np.cumsum(sizes) - sizes  # (K,) over the whole batch
    row_slot = batch_row * seq_len + starts - starts[row_base]  # (K,) flat index of its [CLS]

    token_chunk = np.repeat(np.arange(len(chunk)), sizes)  # (N,) for each non-pad token
    position = np.arange(len(token_chunk)) - starts[token_chunk]
    flat = row_slot[token_chunk] + position

    input_ids = np.full(len(row_ids) * seq_len, pad_id, dtype=np.int32)
    is_cls = position == 0
    is_sep = position == sizes[token_chunk] - 1
    body = ~(is_cls | is_sep)
    body_chunk = chunk[token_chunk[body]]
    offset_in_doc = plan.chunk_start[body_chunk] + position[body] - 1
    input_ids[flat[body]] = store.gather(plan.chunk_doc[body_chunk], offset_in_doc)
    input_ids[flat[is_cls]] = cls_id
    input_ids[flat[is_sep]] = sep_id
    segment_ids = np.zeros(len(row_ids) * seq_len, dtype=np.int32)
    segment_ids[flat] = index_in_row[token_chunk] + 1
    positions = np.zeros(len(row_ids) * seq_len, dtype=np.int32)
    positions[flat] = position
    shape = (len(row_ids), seq_len)
    return {
        "input_ids": input_ids.reshape(shape),
        "segment_ids": segment_ids.reshape(shape),
        "positions": positions.reshape(shape),
    }
