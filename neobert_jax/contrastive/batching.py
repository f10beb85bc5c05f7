"""Contrastive batches: which examples form a step, and how their texts are laid out in rows.

A step's texts are numbered column-major: t = k * B + b is column k of example b (anchors first,
then positives, then each negative column). Two layouts put them in rows:

* pack: every text goes into rows of `seq_len` tokens, several per row, by first-fit-decreasing
  (segment ids 1..n, positions restart at every [CLS]); short texts pay for no padding.
* bucket: one text per row, anchors and the other columns in two groups, each padded only to its
  own longest text (rounded up, see `ladder`), as sentence-transformers pads per column.

`text_slot[t]` says where text t's pooled embedding lands: group offset + row * slots + segment.
A step from a source with fewer text columns than the table (pairs beside triplets) has the same
N texts, the missing trailing columns' ones absent: in no row, `present[t]` False (their slot is
any one), so the loss leaves them out and the step keeps one signature.
Row counts and lengths are rounded with `ladder` so that steps come in a few shapes (each
compiles once), or, with a `floor` from `ContrastiveBatches.largest_shapes`, padded to the run's
largest step so that one shape compiles (`data.row_shapes`). The plan covers the global batch;
each process materializes only its rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from neobert_jax.contrastive.sampling import PROPORTIONAL, Schedule, Source, text_keys
from neobert_jax.contrastive.tokenized import TokenizedColumns
from neobert_jax.data.errors import DataError

SPECIALS = 2  # [CLS] and [SEP]
MAX_PLANNED_STEPS = 4096  # largest_shapes: steps planned (row lengths only, no tokens are read)


def ladder(n: int) -> int:
    """Smallest number >= n with at most three significant bits: ..., 8, 10, 12, 14, 16, 20, 24, ...

    Rounding up to these wastes under 25% (12% on average) and leaves ~4 sizes per doubling.
    """
    if n <= 8:
        return max(n, 1)
    shift = n.bit_length() - 3
    return -(-n >> shift) << shift


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def resolve_row_shapes(setting: str) -> str:
    """"auto": one shape on GPU/TPU, where a compilation costs far more than padded rows, and the
    ladder's few shapes on CPU, where every padded row costs its full compute."""
    if setting != "auto":
        return setting
    return "ladder" if jax.default_backend() == "cpu" else "one"


@dataclasses.dataclass(frozen=True)
class Layout:
    kind: str  # "pack" | "bucket"
    seq_len: int
    max_texts_per_row: int
    row_multiple: int  # rows of every group are a multiple of this (batch shards x micro-batches)
    view_columns: tuple[int, ...]  # data column of each text column of a step ((0, 0) for simcse)
    floor: tuple[tuple[int, int], ...] = ()  # per group: (rows, length) no step goes below

    @property
    def slots(self) -> tuple[int, ...]:
        """Pooled slots per row of each group (a static shape of the step)."""
        if self.kind == "pack":
            return (self.max_texts_per_row,)
        return (1,) if len(self.view_columns) == 1 else (1, 1)


@dataclasses.dataclass
class _GroupPlan:
    texts: np.ndarray  # step text indices in this group
    row: np.ndarray  # row of each of those texts
    slot: np.ndarray  # segment (0-based) inside the row
    start: np.ndarray  # first token inside the row
    rows: int  # padded row count
    length: int  # row length
    slots: int


def first_fit(lengths: np.ndarray, capacity: int, max_per_row: int, max_rows: int):
    """First fit of texts in the given order into rows of `capacity` tokens and at most `max_per_row`
    texts, stopping before the first text that would open row `max_rows` + 1
    -> (placed, row, slot, start, rows): the first `placed` texts' row, segment and first token."""
    n = len(lengths)
    row_of, slot_of, start_of = (np.zeros(n, np.int64) for _ in range(3))
    free, count, rows = np.zeros(max_rows, np.int64), np.zeros(max_rows, np.int64), 0
    for i, length in enumerate(lengths):
        fits = np.flatnonzero((free[:rows] >= length) & (count[:rows] < max_per_row))
        if len(fits):
            r = fits[0]
        elif rows == max_rows:
            return i, row_of[:i], slot_of[:i], start_of[:i], rows
        else:
            r, rows = rows, rows + 1
            free[r] = capacity
        row_of[i], slot_of[i], start_of[i] = r, count[r], capacity - free[r]
        free[r] -= length
        count[r] += 1
    return n, row_of, slot_of, start_of, rows


def pack_rows(lengths: np.ndarray, capacity: int, max_per_row: int):
    """First-fit decreasing with at most `max_per_row` texts per row -> (row, slot, start, rows)."""
    order = np.argsort(-lengths, kind="stable")
    _, row, slot, start, rows = first_fit(lengths[order], capacity, max_per_row, len(lengths))
    row_of, slot_of, start_of = (np.zeros(len(lengths), np.int64) for _ in range(3))
    row_of[order], slot_of[order], start_of[order] = row, slot, start
    return row_of, slot_of, start_of, rows


def plan_groups(lengths_N: np.ndarray, batch_size: int, layout: Layout) -> list[_GroupPlan]:
    """Row assignment of a step's texts (lengths with [CLS]/[SEP]) under `layout`."""
    plans = _plan_groups(lengths_N, batch_size, layout)
    for plan, (rows, length) in zip(plans, layout.floor):
        plan.rows, plan.length = max(plan.rows, round_up(rows, layout.row_multiple)), max(plan.length, length)
    return plans


def _plan_groups(lengths_N: np.ndarray, batch_size: int, layout: Layout) -> list[_GroupPlan]:
    if layout.kind == "pack":
        row, slot, start, rows = pack_rows(lengths_N, layout.seq_len, layout.max_texts_per_row)
        padded = round_up(ladder(rows), layout.row_multiple)
        texts = np.arange(len(lengths_N))
        return [_GroupPlan(texts, row, slot, start, padded, layout.seq_len, layout.max_texts_per_row)]
    bounds = [(0, batch_size)] + ([(batch_size, len(lengths_N))] if len(layout.view_columns) > 1 else [])
    plans = []
    for lo, hi in bounds:
        texts = np.arange(lo, hi)
        longest = int(lengths_N[lo:hi].max())
        length = min(ladder(longest), layout.seq_len)
        zeros = np.zeros(len(texts), np.int64)
        plans.append(_GroupPlan(texts, texts - lo, zeros, zeros, round_up(len(texts), layout.row_multiple), length, 1))
    return plans


def present_views(layout: Layout, columns: int | None) -> tuple[int, ...]:
    """The data columns of the step's leading text columns that examples with `columns` data
    columns (None: all) have; the texts of the step's other columns are absent."""
    return tuple(c for c in layout.view_columns if columns is None or c < columns)


def assemble(data: TokenizedColumns, examples: np.ndarray, layout: Layout, *, cls_id: int, sep_id: int,
             pad_id: int, row_range: Callable[[int], tuple[int, int]] | None = None,
             columns: int | None = None) -> tuple[dict, dict]:
    """-> (batch, stats). batch: "groups" (this process's rows of each group as int32 (R, T) arrays
    input_ids / segment_ids / positions), "text_slot" (N,), "present" (N,) bool (False: a text
    of a column beyond the examples' `columns`) and, with vectors, "targets" (B, D).
    stats: global "rows" per group, "texts" (present ones), "tokens" (non-padding) and "slots"
    (all row positions)."""
    body_len = layout.seq_len - SPECIALS
    bodies = [data.body(c, e)[:body_len] for c in present_views(layout, columns) for e in examples]
    lengths_n = np.fromiter((len(b) + SPECIALS for b in bodies), np.int64, len(bodies))  # the leading n of N
    plans = plan_groups(lengths_n, len(examples), layout)
    text_slot_N = np.zeros(len(layout.view_columns) * len(examples), np.int32)
    groups, offset = [], 0
    for plan in plans:
        text_slot_N[plan.texts] = offset + plan.row * plan.slots + plan.slot
        offset += plan.rows * plan.slots
        lo, hi = row_range(plan.rows) if row_range else (0, plan.rows)
        shape = (hi - lo, plan.length)
        ids = np.full(shape, pad_id, np.int32)
        segments, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        for t, row, slot, start in zip(plan.texts, plan.row, plan.slot, plan.start):
            if lo <= row < hi:
                end = start + lengths_n[t]
                ids[row - lo, start:end] = np.concatenate([[cls_id], bodies[t], [sep_id]])
                segments[row - lo, start:end] = slot + 1
                positions[row - lo, start:end] = np.arange(lengths_n[t])
        groups.append({"input_ids": ids, "segment_ids": segments, "positions": positions})
    batch = {"groups": groups, "text_slot": text_slot_N, "present": np.arange(len(text_slot_N)) < len(bodies)}
    if data.vectors is not None:
        batch["targets"] = np.asarray(data.vectors[examples], np.float32)
    stats = {"rows": [p.rows for p in plans], "texts": len(bodies), "tokens": int(lengths_n.sum()),
             "slots": sum(p.rows * p.length for p in plans)}
    return batch, stats


class ContrastiveBatches:
    """Endless iterator of (batch, stats): which examples form step s is `sampling.Schedule`'s
    pure function of (seed, s), so the state is just the step. One source by default (the whole
    table); with several, every batch comes from one of them and holds that source's columns."""

    def __init__(self, data: TokenizedColumns, *, batch_size: int, seed: int, shuffle: bool, layout: Layout,
                 special_ids: dict, row_range: Callable[[int], tuple[int, int]] | None = None,
                 sources: list[Source] | None = None, sampling: str = PROPORTIONAL,
                 weights: list[float] | None = None, no_duplicates: bool = False,
                 log: Callable[[str], None] | None = None):
        self.data, self.batch_size, self.seed, self.shuffle = data, batch_size, seed, shuffle
        self.layout, self.special_ids, self.row_range, self.log = layout, special_ids, row_range, log
        self.sources = sources or [Source("train", 0, data.num_examples)]
        if data.num_examples < batch_size and len(self.sources) == 1:
            raise DataError(f"the training data has {data.num_examples} examples, fewer than "
                            f"train.batch_size={batch_size}")
        keys = None
        if no_duplicates:  # the texts a step embeds: simcse's one column twice counts once
            columns = sorted(set(layout.view_columns))
            keys = text_keys([data.ids[c] for c in columns], [data.offsets[c] for c in columns])
        self.schedule = Schedule(self.sources, batch_size=batch_size, seed=seed, shuffle=shuffle,
                                 sampling=sampling, weights=list(weights or []), keys=keys)
        self.steps_per_epoch = self.schedule.steps_per_epoch
        self.no_duplicates = no_duplicates
        self.step = 0
        self._told: set[tuple[int, int]] = set()

    def __iter__(self):
        return self

    def examples(self, step: int) -> np.ndarray:
        return self.schedule.examples(step)

    def describe(self) -> list[str]:
        """The start lines: each source's examples and steps per epoch, and its first pass's guard counts."""
        lines = []
        for stream, steps in zip(self.schedule.streams, self.schedule.per_epoch):
            s = stream.source
            line = f"data source {s.name}: {s.examples} examples, {steps} steps per epoch"
            if s.columns:
                line += f", text columns {', '.join(s.columns)}"
            if self.no_duplicates:
                line += "; " + self._guard_counts(stream.plan(0))
            lines.append(line)
        return lines

    def _guard_counts(self, plan) -> str:
        return (f"no_duplicates: {plan.deferred} deferred to a later batch, {plan.dropped} in no batch "
                f"of the pass ({len(plan.batches)} full batches)")

    def __next__(self) -> tuple[dict, dict]:
        s, t, k = self.schedule.locate(self.step)
        stream = self.schedule.streams[s]
        plan = stream.plan(t)
        if self.log and self.no_duplicates and t > 0 and (s, t) not in self._told:  # pass 0: in describe()
            self._told.add((s, t))
            self.log(f"data source {stream.source.name} pass {t + 1}: {self._guard_counts(plan)}")
        batch, stats = assemble(self.data, plan.batches[k], self.layout, row_range=self.row_range,
                                columns=self._columns(s), **self.special_ids)
        stats["source"] = s
        self.step += 1
        return batch, stats

    def _columns(self, source: int) -> int | None:
        """The text columns of the source's examples (None: all the table's)."""
        return len(self.sources[source].columns) or None

    def largest_shapes(self, total_steps: int, max_planned: int = MAX_PLANNED_STEPS) -> tuple[tuple[int, int], ...]:
        """Per group, the (rows, length) of the run's largest step: a `Layout.floor` under which every
        step has one shape. Runs longer than `max_planned` steps are planned on that many steps spread
        over the run; a rarer larger step then gets its own (ladder) shape."""
        body_len = self.layout.seq_len - SPECIALS
        lengths = [np.minimum(np.diff(self.data.offsets[c]), body_len) + SPECIALS for c in self.layout.view_columns]
        steps = np.unique(np.linspace(0, total_steps - 1, min(total_steps, max_planned)).round().astype(np.int64))
        largest = None
        for step in steps:
            s, t, k = self.schedule.locate(int(step))
            examples = self.schedule.streams[s].plan(t).batches[k]
            views = len(present_views(self.layout, self._columns(s)))
            shapes = [(p.rows, p.length) for p in plan_groups(
                np.concatenate([c[examples] for c in lengths[:views]]), len(examples), self.layout)]
            largest = shapes if largest is None else [tuple(map(max, a, b)) for a, b in zip(largest, shapes)]
        return tuple(largest)

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
