"""Which examples form each global batch: several sources (every batch from one of them, as
sentence-transformers' MultiDatasetBatchSampler does, since a mixed batch gives easy negatives),
their schedule over an epoch, and the no-duplicates guard (NoDuplicatesBatchSampler's rule: a
repeated text in a batch is a false negative under in-batch negatives).

Everything is a pure function of (seed, step) and the data, so every process plans the same
global batches and a resume continues exactly. Each source is an endless stream of batches cut
from its passes (pass t: a permutation seeded by (seed, t, source)); an epoch of the run takes a
fixed number of batches from each stream, so the step count per epoch never depends on how many
examples the guard left out: the batches a pass lost come from the source's next pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neobert_jax.data.errors import DataError

PROPORTIONAL, ROUND_ROBIN = "proportional", "round_robin"
SAMPLINGS = (PROPORTIONAL, ROUND_ROBIN)
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)
_HASH_CHUNK = 1 << 16  # texts hashed at a time (bounds the uint64 copy of their tokens)


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    start: int  # its first example in the concatenated columns
    examples: int
    columns: tuple[str, ...] = ()  # its text columns: the table's leading len(columns) ones; () = all


@dataclasses.dataclass
class PassPlan:
    batches: list[np.ndarray]  # global example indices of each full batch
    deferred: int  # examples placed in a later batch than the one being filled when they came up
    dropped: int  # examples in no batch of this pass (the remainder included)


def text_keys(ids_columns, offsets_columns) -> np.ndarray:
    """(examples, columns) int64 ids, equal exactly for equal token sequences (a 64-bit polynomial
    hash of each text's tokens and length, then numbered), so preprocessed folders need no strings."""
    hashes = []
    for ids, offsets in zip(ids_columns, offsets_columns):
        out = np.empty(len(offsets) - 1, np.uint64)
        for lo in range(0, len(out), _HASH_CHUNK):
            hi = min(lo + _HASH_CHUNK, len(out))
            first, last = int(offsets[lo]), int(offsets[hi])
            lengths = np.diff(offsets[lo:hi + 1])
            tokens = np.asarray(ids[first:last], np.uint64) + np.uint64(1)
            position = np.arange(last - first) - np.repeat(offsets[lo:hi] - first, lengths)
            longest = int(lengths.max()) if len(lengths) else 0
            powers = np.cumprod(np.full(max(longest, 1), _HASH_BASE, np.uint64))
            with np.errstate(over="ignore"):
                sums = np.concatenate([[np.uint64(0)], np.cumsum(tokens * powers[position], dtype=np.uint64)])
                out[lo:hi] = (sums[offsets[lo + 1:hi + 1] - first] - sums[offsets[lo:hi] - first]
                              + lengths.astype(np.uint64) * _HASH_BASE * _HASH_BASE)
        hashes.append(out)
    stacked = np.stack(hashes, axis=1)
    return np.unique(stacked, return_inverse=True)[1].reshape(stacked.shape).astype(np.int64)


def plan_pass(order: np.ndarray, batch_size: int, keys: list | None) -> PassPlan:
    """Cuts `order` into full batches. With `keys` (per example of `order`'s source, its text ids),
    an example sharing a text with the batch being filled waits for a later one; the waiting ones
    are tried first, in their order, as NoDuplicatesBatchSampler rescans its remaining indices."""
    if keys is None:
        full = len(order) // batch_size
        return PassPlan([order[i * batch_size:(i + 1) * batch_size] for i in range(full)], 0,
                        len(order) - full * batch_size)
    batches, waiting, deferred, i = [], [], 0, 0
    while True:
        batch, seen, still = [], set(), []
        for j, example in enumerate(waiting):
            if len(batch) == batch_size:
                still.extend(waiting[j:])
                break
            if seen.isdisjoint(keys[example]):
                batch.append(example)
                seen.update(keys[example])
            else:
                still.append(example)
        waiting = still
        while len(batch) < batch_size and i < len(order):
            example = int(order[i])
            i += 1
            if seen.isdisjoint(keys[example]):
                batch.append(example)
                seen.update(keys[example])
            else:
                waiting.append(example)
                deferred += 1
        if len(batch) < batch_size:
            return PassPlan(batches, deferred, len(batch) + len(waiting))
        batches.append(np.asarray(batch, np.int64))


class SourceStream:
    """One source's batches, pass after pass; pass lengths are kept to find a batch by its index."""

    def __init__(self, source: Source, index: int, *, batch_size: int, seed: int, shuffle: bool,
                 keys: np.ndarray | None):
        self.source, self.index, self.batch_size = source, index, batch_size
        self.seed, self.shuffle = seed, shuffle
        # its own columns' texts only: a narrower source's absent texts are no duplicates
        self.keys = (None if keys is None else
                     keys[source.start:source.start + source.examples, :len(source.columns) or None].tolist())
        self.lengths: list[int] = []  # batches of each planned pass
        self._plans: dict[int, PassPlan] = {}

    def plan(self, t: int) -> PassPlan:
        if t not in self._plans:
            n = self.source.examples
            seed = [self.seed, t] if self.index == 0 else [self.seed, t, self.index]  # source 0: the one-source order
            order = np.random.default_rng(seed).permutation(n) if self.shuffle else np.arange(n)
            plan = plan_pass(order, self.batch_size, self.keys)
            if not plan.batches:
                raise DataError(f"data source {self.source.name!r}: no batch of train.batch_size={self.batch_size} "
                                "examples without a repeated text; lower train.batch_size or set "
                                "data.no_duplicates=False")
            plan.batches = [b + self.source.start for b in plan.batches]
            if len(self._plans) >= 2:  # resume and the run's order need only the current passes
                self._plans.pop(min(self._plans))
            self._plans[t] = plan
            if t == len(self.lengths):
                self.lengths.append(len(plan.batches))
        return self._plans[t]

    def locate(self, j: int) -> tuple[int, int]:
        """Stream batch j -> (pass, batch in that pass)."""
        if self.keys is None:
            return divmod(j, self.source.examples // self.batch_size)
        t = 0
        while True:
            if t == len(self.lengths):
                self.plan(t)
            if j < self.lengths[t]:
                return t, j
            j -= self.lengths[t]
            t += 1


def steps_of_sources(sources: list[Source], batch_size: int, sampling: str, weights: list[float]) -> list[int]:
    """Batches of each source per epoch. proportional: each source's full batches (one pass), or with
    weights the same total shared out by weight; round_robin: every source as many as the smallest has."""
    full = [s.examples // batch_size for s in sources]
    for s, n in zip(sources, full):
        if n == 0:
            raise DataError(f"data source {s.name!r} has {s.examples} examples, fewer than "
                            f"train.batch_size={batch_size}")
    if sampling == ROUND_ROBIN:
        return [min(full)] * len(sources)
    if not weights:
        return full
    share = np.asarray(weights, np.float64) / sum(weights) * sum(full)
    steps = np.floor(share).astype(int)
    steps[np.argsort(-(share - steps), kind="stable")[:sum(full) - steps.sum()]] += 1  # largest remainders
    for s, n in zip(sources, steps):
        if n == 0:
            raise DataError(f"data.source_weights: source {s.name!r} gets no step per epoch; raise its weight")
    return steps.tolist()


class Schedule:
    """Step -> (source, batch of its stream). An epoch is `sum(per_epoch)` steps; epoch e takes
    batches [e * n_s, (e + 1) * n_s) of source s's stream, in an order shuffled by (seed, e)
    (proportional; spread evenly without data.shuffle) or cycling through the sources (round_robin)."""

    def __init__(self, sources: list[Source], *, batch_size: int, seed: int, shuffle: bool, sampling: str,
                 weights: list[float], keys: np.ndarray | None):
        self.sources, self.sampling, self.seed, self.shuffle = sources, sampling, seed, shuffle
        self.per_epoch = steps_of_sources(sources, batch_size, sampling, weights)
        self.steps_per_epoch = sum(self.per_epoch)
        self.streams = [SourceStream(s, i, batch_size=batch_size, seed=seed, shuffle=shuffle, keys=keys)
                        for i, s in enumerate(sources)]
        self._epoch = (None, None, None)  # (epoch, source of each step, its rank among that source's steps)

    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._epoch[0] != epoch:
            k = len(self.sources)
            if self.sampling == ROUND_ROBIN:
                order = np.tile(np.arange(k), self.per_epoch[0])
            elif self.shuffle:
                labels = np.repeat(np.arange(k), self.per_epoch)
                order = np.random.default_rng([self.seed, epoch, 1 << 31]).permutation(labels)
            else:
                spots = np.concatenate([(np.arange(n) + 0.5) / n for n in self.per_epoch])
                order = np.repeat(np.arange(k), self.per_epoch)[np.argsort(spots, kind="stable")]
            rank = np.zeros(len(order), np.int64)
            for s in range(k):
                rank[order == s] = np.arange(self.per_epoch[s])
            self._epoch = (epoch, order, rank)
        return self._epoch[1], self._epoch[2]

    def locate(self, step: int) -> tuple[int, int, int]:
        """-> (source, pass, batch in that pass)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order, rank = self._order(epoch)
        s = int(order[i])
        return (s, *self.streams[s].locate(epoch * self.per_epoch[s] + int(rank[i])))

    def examples(self, step: int) -> np.ndarray:
        s, t, k = self.locate(step)
        return self.streams[s].plan(t).batches[k]
