"""MLM batches from a `datasets` stream (`data.hf_dataset.streaming`): corpora too large to tokenize up front.

The file pipeline (pipeline.py) plans every row before training; a stream has no known length, so here
documents are tokenized as they arrive and packed online into packing.py's row layout ([CLS] chunk
[SEP] per chunk, documents longer than a row cut into row-sized chunks, segment ids 1..n, positions from
0 at each [CLS]) and masked by the same Masker with the same per-row seeds, so the train step and its
batch contract are unchanged. What differs from files:

- Process p of P reads its own part of the stream (`split_dataset_by_node`: whole shards when P divides
  the shard count, else every P-th example), so the global batch depends on the process count.
- Packing is first fit over the rows of one batch, in stream order (the planned best fit of files sees
  the whole corpus, so it fills rows a little better): a document that fits in none of the rows opens
  the next batch while a few later ones may still fill the gaps. Nothing is dropped or truncated.
- The epoch length is unknown: the run needs train.max_steps; an exhausted stream starts another pass
  (reshuffled with `set_epoch`). Evaluation: data.eval_files, or the first data.eval_samples examples of
  the stream (before sharding and shuffling, the same on every process), which training then skips.
- Resume: the state holds the stream's `state_dict()` (its position after the last example read) and
  the tokens read but not yet packed, so without shuffling a resumed run gets exactly the batches of an
  uninterrupted one. `datasets` does not save a shuffle buffer: with data.shuffle, the documents in it
  at the save are lost for that pass (a few near the save point may repeat) and the order afterwards
  differs. Checkpoints hold process 0's state; another process resumes at that position of its own
  part (approximate) and without its unpacked tokens. `set_state` logs which case applies.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import math
from collections.abc import Iterator

import numpy as np

from neobert_jax.data import sources
from neobert_jax.data.errors import DataError
from neobert_jax.data.masking import Masker
from neobert_jax.data.packing import SPECIALS_PER_CHUNK
from neobert_jax.data.token_store import TokenStore
from neobert_jax.data.tokenizer import TextEncoder, special_ids

STATE_FORMAT = "neobert_jax.stream/1"
_READ_GROUP = 32  # documents tokenized in one call: amortizes the call, keeps the unpacked tail small
_MISSES = 16  # documents a batch may pass over (they open the next one) before it closes


@dataclasses.dataclass
class StreamStats:
    """Counts of this process's part of the stream so far (they continue across a resume)."""

    source: str
    eval_held_out: int = 0  # examples at the head of the stream kept for evaluation
    documents: int = 0  # documents handed on to tokenization
    empty_skipped: int = 0
    bad_records_skipped: int = 0  # only with skip_bad_records
    documents_without_tokens: int = 0
    documents_split: int = 0  # longer than a row, cut into row-sized chunks
    rows: int = 0  # rows built by this process
    tokens: int = 0  # non-padding tokens in those rows
    passes: int = 0  # completed passes over the stream

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return json.dumps(self.as_dict())

    def describe(self) -> str:
        return (f"streaming data.hf_dataset {self.source}, tokenized and packed online (epoch length unknown)"
                + (f"; its first {self.eval_held_out:,} examples held out for evaluation" if self.eval_held_out else ""))


class StreamingMlmIterator:
    """Next batch, `get_state()` / `set_state()` (JSON-able), `stats`, `max_predictions`, `steps_per_epoch`."""

    def __init__(self, open_stream, *, encoder: TextEncoder, masker: Masker, text_field: str, skip_bad: bool,
                 seq_len: int, batch_size: int, first_slot: int, seed: int, process_index: int, process_count: int,
                 shuffled: bool, shuffle_buffer: int, ids: tuple[int, int, int], stats: StreamStats, log=print):
        self._open_stream = open_stream  # pass number -> IterableDataset of this process
        self._encoder, self._masker = encoder, masker
        self._text_field, self._skip_bad = text_field, skip_bad
        self._seq_len, self._batch_size, self._first_slot, self._seed = seq_len, batch_size, first_slot, seed
        self._process_index, self._process_count = process_index, process_count
        self._shuffled, self._shuffle_buffer = shuffled, shuffle_buffer
        self._cls, self._sep, self._pad = ids
        self.stats, self.log = stats, log
        self.max_predictions = masker.max_predictions
        self._step, self._pass, self._first_pass_steps = 0, 0, None
        self._pending: collections.deque[np.ndarray] = collections.deque()  # read, not yet packed
        self._dataset = self._texts = None
        self._stream_state = None  # the stream's state after the last example read; None = its pass's start
        self._pass_documents, self._resumed_pass = 0, False  # documents with tokens read in this pass; from a state

    @property
    def steps_per_epoch(self) -> float:
        """Steps the first pass over the stream took; inf until one ended (the runner's epoch count is then 0)."""
        return self._first_pass_steps or math.inf

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rows = self._pack_batch()
        slots = range(self._first_slot, self._first_slot + self._batch_size)
        batch = self._masker(self._assemble(rows), [np.random.default_rng([self._seed, 0, self._step, s])
                                                    for s in slots])  # 0: the train split, as pipeline.SPLITS
        self._step += 1
        self.stats.rows += self._batch_size
        self.stats.tokens += int(np.count_nonzero(batch["segment_ids"]))
        return batch

    def _pack_batch(self) -> list[list[np.ndarray]]:
        """First fit of the next chunks over the batch's rows, in stream order. A document whose next
        chunk fits nowhere waits for the next batch (where it comes first, so it always fits) while
        later ones may fill the gaps; the batch closes after _MISSES such documents."""
        body = self._seq_len - SPECIALS_PER_CHUNK
        free = [self._seq_len] * self._batch_size
        rows: list[list[np.ndarray]] = [[] for _ in free]
        index = misses = 0  # into the pending documents; those before `index` wait for the next batch
        while misses < _MISSES and max(free) > SPECIALS_PER_CHUNK:
            if index == len(self._pending):
                self._read_group()
                continue
            document = self._pending[index]
            chunk = document[:body]
            size = len(chunk) + SPECIALS_PER_CHUNK
            row = next((r for r, room in enumerate(free) if room >= size), None)
            if row is None:
                index, misses = index + 1, misses + 1
                continue
            rows[row].append(chunk)
            free[row] -= size
            if len(document) > body:
                self._pending[index] = document[body:]
            else:
                del self._pending[index]
        return rows

    def _assemble(self, rows: list[list[np.ndarray]]) -> dict:
        shape = (self._batch_size, self._seq_len)
        input_ids = np.full(shape, self._pad, np.int32)
        segment_ids, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        for r, chunks in enumerate(rows):
            start = 0
            for segment, chunk in enumerate(chunks, start=1):
                end = start + len(chunk) + SPECIALS_PER_CHUNK
                input_ids[r, start], input_ids[r, start + 1:end - 1], input_ids[r, end - 1] = self._cls, chunk, self._sep
                segment_ids[r, start:end] = segment
                positions[r, start:end] = np.arange(end - start)
                start = end
        return {"input_ids": input_ids, "segment_ids": segment_ids, "positions": positions}

    def _read_group(self) -> None:
        """Reads and tokenizes up to _READ_GROUP documents; at the stream's end starts the next pass."""
        if self._texts is None:
            self._start_pass(self._stream_state)
        texts = list(itertools.islice(self._texts, _READ_GROUP))
        if texts:
            self._stream_state = self._dataset.state_dict()
            ids, lengths = self._encoder.encode(texts)
            body = self._seq_len - SPECIALS_PER_CHUNK
            self.stats.documents_without_tokens += int(np.count_nonzero(lengths == 0))
            self.stats.documents_split += int(np.count_nonzero(lengths > body))
            for document in np.split(ids.astype(np.int32), np.cumsum(lengths)[:-1]):
                if len(document):
                    self._pending.append(document)
                    self._pass_documents += 1
        if len(texts) < _READ_GROUP:  # the stream ended
            if self._pass_documents == 0 and not self._resumed_pass:  # else every pass would be empty
                raise DataError(f"data.hf_dataset: {self.stats.source} has no documents with tokens to train on "
                                f"({self.stats.empty_skipped} empty, {self.stats.bad_records_skipped} bad records)")
            self._pass += 1
            self.stats.passes += 1
            self._first_pass_steps = self._first_pass_steps or self._step + 1
            self._stream_state = None
            self._start_pass(None)

    def _start_pass(self, state: dict | None) -> None:
        self._dataset = self._open_stream(self._pass)
        if state is not None:
            self._dataset.load_state_dict(state)
        self._pass_documents, self._resumed_pass = 0, state is not None
        self._texts = stream_texts(iter(self._dataset), self._text_field, self._skip_bad, self.stats)

    def get_state(self) -> dict:
        return {"format": STATE_FORMAT, "process_index": self._process_index, "step": self._step,
                "pass": self._pass, "stream": self._stream_state, "first_pass_steps": self._first_pass_steps,
                "pending": [d.tolist() for d in self._pending], "stats": self.stats.as_dict()}

    def set_state(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise DataError(f"the checkpoint's data state is not a stream's (format {state.get('format')!r}); "
                            "resume with the data settings the run started with")
        self._step, self._pass, self._first_pass_steps = state["step"], state["pass"], state["first_pass_steps"]
        self._stream_state, self._texts = state["stream"], None
        own = state["process_index"] == self._process_index
        pending = state["pending"] if own else []
        self._pending = collections.deque(np.asarray(d, np.int32) for d in pending)
        self.stats = StreamStats(**state["stats"])
        where = f"data: resumed the stream at step {self._step} (pass {self._pass + 1}, {self.stats.documents:,} " \
                f"documents read)"
        if not own:
            self.log(f"{where}, approximately: the checkpoint holds process {state['process_index']}'s stream "
                     "position; this process continues at that position of its own part, without its unpacked tokens")
        elif self._shuffled:
            self.log(f"{where}, not exactly: datasets does not save the shuffle buffer, so the documents in it "
                     f"(up to data.shuffle_buffer={self._shuffle_buffer}) are lost for this pass and the order "
                     "from here differs from an uninterrupted run (data.shuffle=False resumes exactly)")
        else:
            others = (f"; processes 1-{self._process_count - 1} resume approximately (a checkpoint holds process "
                      "0's state only)" if self._process_count > 1 else "")
            self.log(f"{where}, exactly: the stream position and {sum(map(len, pending)):,} read but unpacked "
                     f"tokens were saved{others}")


def stream_texts(examples, text_field: str, skip_bad: bool, stats) -> Iterator[str]:
    """The stripped non-empty texts of stream examples; skips are counted in `stats` (StreamStats or
    sources.ReadStats: the same field names). A missing text column is a settings error."""
    for number, example in enumerate(examples, start=1):
        if text_field not in example:
            sources.check_text_feature("data.hf_dataset", sorted(example), text_field)
        text = example[text_field]
        if not isinstance(text, str):
            if not skip_bad:
                raise DataError(f"data.hf_dataset: example {number}: {text_field!r} is {type(text).__name__}, "
                                "expected a string (set data.skip_bad_records to count and skip such examples)")
            stats.bad_records_skipped += 1
            continue
        text = text.strip()
        if not text:
            stats.empty_skipped += 1
            continue
        stats.documents += 1
        yield text


def build_streaming_iterator(cfg, *, tokenizer, seq_len: int, batch_size: int, seed: int, process_index: int,
                             process_count: int, log=print) -> StreamingMlmIterator:
    """The train split of a streamed `data.hf_dataset`, this process's `batch_size` rows per step."""
    from datasets.distributed import split_dataset_by_node

    base = _load_stream(cfg.hf_dataset)
    first = next(iter(base.take(1)), None)  # a wrong text_field fails here, before the run writes anything
    if first is None:
        raise DataError(f"data.hf_dataset: {sources.hf_description(cfg.hf_dataset)} is empty")
    sources.check_text_feature(f"data.hf_dataset {sources.hf_description(cfg.hf_dataset)}", sorted(first),
                               cfg.text_field)
    held_out = cfg.eval_samples if not cfg.eval_files else 0
    shuffled = bool(cfg.shuffle)
    if cfg.shuffle_buffer < 1:
        raise DataError(f"data.shuffle_buffer: must be >= 1, got {cfg.shuffle_buffer}")

    def open_stream(pass_number: int):
        stream = base.skip(held_out) if held_out else base
        if process_count > 1:
            stream = split_dataset_by_node(stream, rank=process_index, world_size=process_count)
        if shuffled:
            stream = stream.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)
        stream.set_epoch(pass_number)
        return stream

    masker = Masker.for_tokenizer(tokenizer, special_ids(tokenizer), seq_len, cfg.mlm_probability, cfg.mask_all)
    stats = StreamStats(source=sources.hf_description(cfg.hf_dataset)
                        + (f", process {process_index}'s part of {process_count}" if process_count > 1 else "")
                        + (f", shuffle buffer {cfg.shuffle_buffer}" if shuffled else ", not shuffled"),
                        eval_held_out=held_out)
    return StreamingMlmIterator(
        open_stream, encoder=TextEncoder(tokenizer), masker=masker, text_field=cfg.text_field,
        skip_bad=cfg.skip_bad_records, seq_len=seq_len, batch_size=batch_size, first_slot=process_index * batch_size,
        seed=seed, process_index=process_index, process_count=process_count, shuffled=shuffled, shuffle_buffer=cfg.shuffle_buffer,
        ids=(tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id), stats=stats, log=log)


def head_store(cfg, tokenizer) -> TokenStore:
    """The first data.eval_samples examples of the stream, tokenized: the eval split without eval_files."""
    return _head_store(json.dumps(cfg.hf_dataset.to_dict(), default=str), cfg.eval_samples, cfg.text_field,
                       cfg.skip_bad_records, tokenizer)


@functools.lru_cache(maxsize=2)
def _head_store(settings: str, count: int, text_field: str, skip_bad: bool, tokenizer) -> TokenStore:
    import ml_collections

    read_stats = sources.ReadStats(files=1)
    head = _load_stream(ml_collections.ConfigDict(json.loads(settings))).take(count)
    return TokenStore.from_texts(stream_texts(iter(head), text_field, skip_bad, read_stats), TextEncoder(tokenizer),
                                 read_stats)


def _load_stream(hf):
    import datasets

    stream = sources.load_hf_dataset(hf, streaming=True)
    if not isinstance(stream, datasets.IterableDataset):
        raise DataError(f"data.hf_dataset.split: {sources.hf_description(hf)} is not one split "
                        f"({type(stream).__name__}); name one, e.g. train")
    return stream
