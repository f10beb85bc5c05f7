"""Training batches of labelled texts, several examples packed into each row.

A step still trains on `batch_size` examples (a fresh permutation per epoch, seeded by seed and
epoch, cut into batches, so the state is one position); they are placed first-fit-decreasing into
rows of `width` tokens, each example its own segment (ids 1, 2, ... with positions from 0), so
attention never crosses examples and the model computes what it would for each one alone. Short
texts padded to a long row would otherwise be most of the step's work. The rows (and examples per
row) of every step of the run are planned at setup and the largest is the step's shape: one
compilation. `pack=False` puts one example in each row (the unpacked layout, same code path).

Sequence labels are per slot (row, k-th example of the row) with a validity mask; token labels
are per token, IGNORE outside the examples' labelled tokens. Each process builds its rows
(`row_range`) of a global batch that does not depend on the process count.
"""

from __future__ import annotations

import math

import numpy as np

IGNORE = -100


def pack_rows(lengths: list[int], width: int, pack: bool) -> list[list[int]]:
    """Indices into `lengths`, grouped into rows of at most `width` tokens: first fit, longest first
    (ties in order); one index a row without `pack`."""
    if not pack:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def row_arrays(ids: list[np.ndarray], rows: list[list[int]], width: int, pad_id: int) -> dict[str, np.ndarray]:
    """(len(rows), width) input_ids, segment_ids (example k of a row is segment k + 1) and positions
    (from 0 in each example) of the examples `rows` name."""
    shape = (len(rows), width)
    input_ids = np.full(shape, pad_id, np.int32)
    segment_ids, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    for r, row in enumerate(rows):
        start = 0
        for slot, example in enumerate(row):
            end = start + len(ids[example])
            input_ids[r, start:end], segment_ids[r, start:end] = ids[example], slot + 1
            positions[r, start:end] = np.arange(end - start)
            start = end
    return {"input_ids": input_ids, "segment_ids": segment_ids, "positions": positions}


class PackedBatches:
    """Next global batch (this process's rows), `get_state()` / `set_state()`, `steps_per_epoch`,
    and the planned step shape: `rows` x `width` tokens, at most `slots` examples a row."""

    def __init__(self, data, *, batch_size: int, width: int, pad_id: int, seed: int, shuffle: bool, pack: bool,
                 total_steps_for, row_multiple: int, row_range):
        """total_steps_for(steps_per_epoch) -> the run's steps (the plan covers them all);
        row_multiple: the rows of a step are rounded up to it (batch shards, micro-batches)."""
        self.data, self.batch_size, self.width, self.pad_id = data, batch_size, width, pad_id
        self.seed, self.shuffle, self.pack, self.row_range = seed, shuffle, pack, row_range
        self.position = 0
        self.steps_per_epoch = -(-len(data) // batch_size)
        self._orders: dict[int, np.ndarray] = {}
        self.total_steps = total_steps_for(self.steps_per_epoch)
        lengths = np.fromiter((len(ids) for ids in data.ids), np.int64, len(data))
        most_rows = most_slots = 1
        self.tokens = 0  # planned steps' real tokens, for the padding share
        for step in range(self.total_steps):
            chosen = self._chosen(step * batch_size)
            rows = pack_rows(lengths[chosen].tolist(), width, pack)
            most_rows, most_slots = max(most_rows, len(rows)), max(most_slots, max(map(len, rows)))
            self.tokens += int(lengths[chosen].sum())
        self.rows = math.ceil(most_rows / row_multiple) * row_multiple
        self.slots = most_slots
        self._lengths = lengths

    def describe(self) -> str:
        padding = lambda rows: 100 * (1 - self.tokens / max(self.total_steps * rows * self.width, 1))
        layout = "packed" if self.pack else "one a row"
        return (f"rows: {self.batch_size} examples a step {layout} in {self.rows} rows of {self.width} tokens "
                f"(at most {self.slots} a row; {padding(self.rows):.0f}% of the step's tokens padding, against "
                f"{padding(self.batch_size):.0f}% with one example a row)")

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            n = len(self.data)
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                            else np.arange(n)}
        return self._orders[epoch]

    def _chosen(self, position: int) -> np.ndarray:
        n = len(self.data)
        return np.asarray([self._order(p // n)[p % n] for p in range(position, position + self.batch_size)])

    def __iter__(self):
        return self

    def __next__(self) -> tuple[dict, dict]:
        chosen = self._chosen(self.position)
        self.position += self.batch_size
        rows = pack_rows(self._lengths[chosen].tolist(), self.width, self.pack)
        lo, hi = self.row_range(self.rows)
        own_rows = [[int(chosen[i]) for i in row] for row in rows[lo:hi]]
        batch = self._assemble(own_rows + [[]] * (hi - lo - len(own_rows)))  # planned rows past the packing: empty
        own = [example for row in own_rows for example in row]
        return batch, {"examples": len(own), "tokens": int(self._lengths[own].sum()) if own else 0}

    def _assemble(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        batch = row_arrays(self.data.ids, rows, self.width, self.pad_id)
        targets = self.data.targets  # per example (an array), or per token (a list of arrays)
        if isinstance(targets, list):
            labels = np.full(batch["input_ids"].shape, IGNORE, np.int32)
            for r, row in enumerate(rows):
                start = 0
                for example in row:
                    labels[r, start:start + len(targets[example])] = targets[example]
                    start += len(self.data.ids[example])
            return {**batch, "labels": labels}
        labels = np.zeros((len(rows), self.slots, *targets.shape[1:]), targets.dtype)
        valid = np.zeros((len(rows), self.slots), np.float32)
        for r, row in enumerate(rows):
            for slot, example in enumerate(row):
                labels[r, slot], valid[r, slot] = targets[example], 1.0
        return {**batch, "labels": labels, "slot_valid": valid}

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
