"""The MLM batch iterator: corpus -> split -> packing plan -> per-process rows -> masked batches.

Everything a global batch holds is a pure function of (seed, split, global step): rows come from a
plan fixed at startup, the epoch's order from grain's index shuffle, each row's mask from an RNG
seeded with those numbers and the row's place in the batch. Process p of P builds only rows
[p * B/P, (p+1) * B/P) of it. So batches depend neither on worker threads nor on the process count
(a run continues on another number of hosts), and the grain iterator state (the next step, the same
on every process) is all a checkpoint needs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import grain
import ml_collections
from grain.experimental import index_shuffle
import numpy as np

from neobert_jax.data import sources
from neobert_jax.data.errors import DataError
from neobert_jax.data.masking import Masker
from neobert_jax.data.packing import PACKING_METHODS, PackPlan, assemble_rows, plan_rows
from neobert_jax.data.token_store import TokenStore
from neobert_jax.data.tokenizer import DEFAULT_VOCAB_SIZE, TextEncoder, missing_special_tokens, special_ids

SPLITS = ("train", "eval")
_HOLDOUT_SEED = 0x5EED  # eval hold-out depends on the corpus only, not on the run's seed


def default_data_config() -> ml_collections.ConfigDict:
    """The `config.data` section, with defaults; the trainer merges it into its config."""
    files = functools.partial(ml_collections.FieldReference, "", field_type=object)  # a str or a list
    return ml_collections.ConfigDict(
        {
            "train_files": files(),  # path, glob, "a,b" or list; "" = the built-in corpus (Python's docs)
            "eval_files": files(),  # same forms; "" = hold out eval_samples documents from train_files
            "eval_samples": 0,  # held-out documents (or, with eval_files, the first N eval documents)
            # datasets.load_dataset(name, config, split=, data_files=) instead of train_files; a builder
            # such as "json" / "text" / "parquet" with data_files reads local files the same way
            "hf_dataset": ml_collections.ConfigDict({
                "name": "",  # hub name or builder; "" = off
                "config": "",  # the dataset's config (subset) name
                "split": "train",
                "data_files": files(),  # passed on to load_dataset when set
                "streaming": False,  # True: read as a stream, packed online (needs train.max_steps)
            }),
            "shuffle_buffer": 10000,  # streaming: documents in the shuffle buffer (data.shuffle)
            "text_field": "text",  # .jsonl / .parquet / datasets column holding the text
            "skip_bad_records": False,  # count and skip bad JSONL lines / null texts instead of failing
            "preprocessed_dir": "",  # scripts/preprocess.py output; used instead of train_files
            "tokenizer": "",  # HF tokenizer folder; "" = train one on train_files (output_dir/tokenizer)
            "tokenizer_vocab_size": DEFAULT_VOCAB_SIZE,  # for a trained tokenizer
            # documents with fewer tokens are skipped (and counted), so that a long-context phase's
            # rows hold long text rather than many short documents side by side
            "min_document_tokens": 0,
            "packing": "best_fit",  # "first_fit" | "best_fit" | "none" (one document per padded row)
            "mlm_probability": 0.30,
            "mask_all": False,  # True: every picked token becomes [MASK]; False: 80/10/10
            "shuffle": True,  # train split: shuffle documents before packing and rows every epoch
            "num_threads": 2,  # grain threads assembling batches
            "prefetch_buffer_size": 8,  # batches prepared ahead
        }
    )


@dataclasses.dataclass(frozen=True)
class DataStats:
    """What the trainer logs: how the corpus was read, split, packed and shared out."""

    files: int
    documents_read: int
    empty_skipped: int
    bad_records_skipped: int
    invalid_utf8_replaced: int
    eval_held_out: int  # documents removed from train for the eval split
    documents_too_short: int  # fewer tokens than data.min_document_tokens, skipped
    documents: int  # non-empty documents in this split
    documents_split: int  # longer than a row, cut into row-sized chunks
    documents_without_tokens: int
    chunks: int
    rows: int  # packed rows of the split, all processes
    tokens: int  # non-padding tokens in those rows
    packing_efficiency: float  # tokens / (rows * seq_len)
    rows_per_epoch: int  # rows this process yields per epoch
    rows_unused_per_epoch: int  # rows of the split no process uses in an epoch (others each epoch)
    steps_per_epoch: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return json.dumps(self.as_dict())

    def describe(self) -> str:
        """One readable line for a run's start, every skip counted."""
        skipped = ", ".join(f"{n:,} {what}" for n, what in (
            (self.empty_skipped, "empty"), (self.bad_records_skipped, "bad records"),
            (self.documents_without_tokens, "without tokens"),
            (self.documents_too_short, "shorter than data.min_document_tokens")) if n) or "none"
        return (f"{self.documents:,} documents from {self.files} file(s), {self.eval_held_out:,} more held out for "
                f"evaluation; skipped: {skipped}"
                + (f"; {self.invalid_utf8_replaced:,} with invalid UTF-8 replaced" if self.invalid_utf8_replaced else "")
                + f"; {self.documents_split:,} longer than a row, cut -> {self.rows:,} packed rows, {self.tokens:,} "
                f"tokens, {self.packing_efficiency:.1%} of the rows filled; {self.steps_per_epoch:,} steps per epoch"
                + (f" ({self.rows_unused_per_epoch:,} rows left over each epoch)" if self.rows_unused_per_epoch else ""))


class MlmIterator(grain.DatasetIterator):
    """Grain's checkpointable iterator plus what the trainer needs to know about the epoch.

    `get_state()` is a small JSON-able dict; `set_state()` continues with exactly the next batch.
    Works with `grain.checkpoint.CheckpointSave/CheckpointRestore` (orbax) as-is.
    """

    def __init__(self, inner: grain.DatasetIterator, stats: DataStats, max_predictions: int):
        super().__init__(inner)
        self.stats = stats
        self.steps_per_epoch = stats.steps_per_epoch
        self.max_predictions = max_predictions

    def __next__(self) -> dict:
        return next(self._parent)

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


def build_mlm_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    tokenizer,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    split: str = "train",
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    log=print,
) -> MlmIterator:
    """Batches of the contract in docs/contracts.md: `batch_size` rows for this process per step.

    train: shuffled, `num_epochs` passes (None = forever), every process the same number of steps.
    eval: one deterministic pass in corpus order; the last batch is filled with all-padding rows.
    A streamed data.hf_dataset's train split is a streaming.StreamingMlmIterator (same batches and
    methods, no epoch length), which reports a resume's exactness through `log`.
    """
    cfg = data_config
    _check_settings(cfg, tokenizer, split, seq_len, batch_size, process_index, process_count)
    if split == "train" and cfg.hf_dataset.streaming:
        from neobert_jax.data.streaming import build_streaming_iterator

        return build_streaming_iterator(cfg, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size, seed=seed,
                                        process_index=process_index, process_count=process_count, log=log)
    store, plan, held_out, too_short = _plan_split(cfg, tokenizer, split, seq_len, seed)
    shuffle = split == "train" and cfg.shuffle
    steps_per_epoch = _steps_per_epoch(plan, split, batch_size * process_count)
    masker = Masker.for_tokenizer(tokenizer, special_ids(tokenizer), seq_len, cfg.mlm_probability, cfg.mask_all)
    make_batch = _BatchMaker(
        plan=plan,
        store=store,
        batch_size=batch_size,
        first_slot=process_index * batch_size,
        global_batch_size=batch_size * process_count,
        steps_per_epoch=steps_per_epoch,
        shuffle=shuffle,
        seed=seed,
        split_index=SPLITS.index(split),
        masker=masker,
        cls_id=tokenizer.cls_token_id,
        sep_id=tokenizer.sep_token_id,
        pad_id=tokenizer.pad_token_id,
    )
    epochs = num_epochs if split == "train" else 1
    steps = grain.MapDataset.range(steps_per_epoch).repeat(epochs).map_with_index(make_batch)
    read_options = grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch_buffer_size)
    global_rows = steps_per_epoch * batch_size * process_count
    epoch_slots = np.arange(steps_per_epoch)[:, None] * batch_size * process_count + make_batch.first_slot
    rows_used = int(np.sum(epoch_slots + np.arange(batch_size) < plan.num_rows))  # eval: no padding rows
    read = store.read_stats
    stats = DataStats(
        files=read.files,
        documents_read=read.documents,
        empty_skipped=read.empty_skipped,
        bad_records_skipped=read.bad_records_skipped,
        invalid_utf8_replaced=read.invalid_utf8_replaced,
        eval_held_out=held_out,
        documents_too_short=too_short,
        documents=plan.documents,
        documents_split=plan.documents_split,
        documents_without_tokens=plan.documents_empty,
        chunks=len(plan.chunk_length),
        rows=plan.num_rows,
        tokens=plan.tokens,
        packing_efficiency=round(plan.efficiency, 4),
        rows_per_epoch=rows_used,
        rows_unused_per_epoch=max(plan.num_rows - global_rows, 0),
        steps_per_epoch=steps_per_epoch,
    )
    return MlmIterator(iter(steps.to_iter_dataset(read_options)), stats, masker.max_predictions)


def packed_rows(data_config: ml_collections.ConfigDict, *, tokenizer, seq_len: int, seed: int = 0,
                split: str = "train") -> int:
    """Rows (of all processes) the split packs into, before an iterator exists: what sizes an
    automatic batch. Cheap after the first call: the tokenized corpus is cached."""
    _check_settings(data_config, tokenizer, split, seq_len, 1, 0, 1)
    return _plan_split(data_config, tokenizer, split, seq_len, seed)[1].num_rows


def eval_documents(data_config: ml_collections.ConfigDict, tokenizer, count: int, max_tokens: int
                   ) -> list[np.ndarray]:
    """The first `count` documents of the eval split with a token, each cut to its first
    `max_tokens` tokens (no specials): what pseudo-perplexity scores at the end of a run."""
    store, doc_ids, _ = _split_documents(data_config, tokenizer, "eval")
    lengths = np.minimum(store.doc_lengths[doc_ids], max_tokens)
    chosen = [(d, n) for d, n in zip(doc_ids, lengths) if n > 0][:count]
    return [store.gather(np.full(n, d), np.arange(n)) for d, n in chosen]


def _plan_split(cfg, tokenizer, split: str, seq_len: int, seed: int) -> tuple[TokenStore, PackPlan, int, int]:
    """-> (store, plan, documents held out for eval, documents shorter than data.min_document_tokens)."""
    store, doc_ids, held_out = _split_documents(cfg, tokenizer, split)
    long_enough = store.doc_lengths[doc_ids] >= cfg.min_document_tokens
    too_short = int((~long_enough).sum())
    doc_ids = doc_ids[long_enough]
    if too_short and not len(doc_ids):
        raise DataError(f"{split} split: all {too_short:,} documents are shorter than data.min_document_tokens="
                        f"{cfg.min_document_tokens}")
    if split == "train" and cfg.shuffle:
        doc_ids = np.random.default_rng(seed).permutation(doc_ids)
    return store, plan_rows(doc_ids, store.doc_lengths[doc_ids], seq_len, cfg.packing), held_out, too_short


def _steps_per_epoch(plan: PackPlan, split: str, global_batch_size: int) -> int:
    """train: whole global batches (the rows left over change every epoch); eval: every row once,
    the last batch topped up with all-padding rows."""
    if plan.num_rows == 0:
        raise DataError(f"{split} split: nothing left to pack ({plan.documents_empty} documents without tokens)")
    if split == "eval":
        return -(-plan.num_rows // global_batch_size)
    if plan.num_rows < global_batch_size:
        raise DataError(
            f"train split packs into {plan.num_rows} rows of {plan.seq_len} tokens, fewer than "
            f"batch_size x processes = {global_batch_size}; use a smaller batch or more data"
        )
    return plan.num_rows // global_batch_size


def _check_settings(cfg, tokenizer, split, seq_len, batch_size, process_index, process_count) -> None:
    problems = []
    if missing := missing_special_tokens(tokenizer):
        problems.append(f"the tokenizer has no {'/'.join(missing)} token; MLM needs cls, sep, pad and mask tokens")
    if split not in SPLITS:
        problems.append(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.packing not in PACKING_METHODS:
        problems.append(f"data.packing must be one of {PACKING_METHODS}, got {cfg.packing!r}")
    if not 0.0 < cfg.mlm_probability <= 1.0:
        problems.append(f"data.mlm_probability must be in (0, 1], got {cfg.mlm_probability}")
    if cfg.min_document_tokens < 0:
        problems.append(f"data.min_document_tokens must be >= 0, got {cfg.min_document_tokens}")
    if cfg.preprocessed_dir and cfg.train_files:
        problems.append("set data.train_files or data.preprocessed_dir, not both")
    if cfg.hf_dataset.name and (cfg.preprocessed_dir or cfg.train_files):
        problems.append("set data.hf_dataset.name or data.train_files / data.preprocessed_dir, not both")
    if cfg.hf_dataset.streaming and not cfg.hf_dataset.name:
        problems.append("data.hf_dataset.streaming needs data.hf_dataset.name")
    if seq_len < 3 or batch_size < 1 or not 0 <= process_index < process_count:
        problems.append(
            f"bad shape: seq_len {seq_len}, batch_size {batch_size}, process {process_index} of {process_count}"
        )
    if problems:
        raise DataError("; ".join(problems))


@dataclasses.dataclass(frozen=True)
class _BatchMaker:
    """Global step -> this process's rows of the global batch; a pure function so grain may call it
    from any thread."""

    plan: PackPlan
    store: TokenStore
    batch_size: int  # rows of this process
    first_slot: int  # this process's first row in the global batch
    global_batch_size: int
    steps_per_epoch: int
    shuffle: bool
    seed: int
    split_index: int  # keeps the splits' mask draws apart
    masker: Masker
    cls_id: int
    sep_id: int
    pad_id: int

    def __call__(self, step: int, step_in_epoch: int) -> dict:
        epoch = step // self.steps_per_epoch
        batch_slots = np.arange(self.first_slot, self.first_slot + self.batch_size)
        slots = step_in_epoch * self.global_batch_size + batch_slots  # positions in the epoch's row order
        if self.shuffle:
            last = self.plan.num_rows - 1
            epoch_seed = (self.seed + epoch) % 2**32
            slots = np.array([index_shuffle(int(s), max_index=last, seed=epoch_seed, rounds=4) for s in slots])
        row_ids = np.where(slots < self.plan.num_rows, slots, -1)  # eval: past the end = all-padding rows
        rows = assemble_rows(self.plan, self.store, row_ids, cls_id=self.cls_id, sep_id=self.sep_id, pad_id=self.pad_id)
        return self.masker(rows, [np.random.default_rng([self.seed, self.split_index, step, int(slot)])
                                  for slot in batch_slots])


def _split_documents(cfg, tokenizer, split: str) -> tuple[TokenStore, np.ndarray, int]:
    """The token store and the ids of its documents that form `split`, plus the hold-out size."""
    eval_files = sources.resolve_files(cfg.eval_files, what="eval_files")
    if split == "eval" and eval_files:
        store = _tokenize(eval_files, cfg, tokenizer)
        _require_documents(store, cfg.eval_files)
        count = min(cfg.eval_samples, store.num_documents) if cfg.eval_samples > 0 else store.num_documents
        return store, np.arange(count), 0
    if split == "eval" and cfg.eval_samples <= 0:
        raise DataError("no eval split: set data.eval_files, or data.eval_samples to hold documents out of train")
    hf = cfg.hf_dataset
    if hf.streaming and split == "train":
        raise DataError("data.hf_dataset.streaming: a stream has no packing plan to size a batch from; "
                        "set train.batch_size")
    if hf.streaming:  # the eval split is the stream's first eval_samples examples, all of them
        from neobert_jax.data.streaming import head_store

        store = head_store(cfg, tokenizer)
        _require_documents(store, f"the first {cfg.eval_samples} examples of data.hf_dataset")
        return store, np.arange(store.num_documents), store.num_documents
    if cfg.preprocessed_dir:
        store = TokenStore.open(cfg.preprocessed_dir, tokenizer)
    elif hf.name:
        store = _tokenized_hf(json.dumps(hf.to_dict(), default=str), cfg.text_field, cfg.skip_bad_records, tokenizer)
    else:
        store = _tokenize(sources.resolve_files(cfg.train_files, what="train_files"), cfg, tokenizer)
    _require_documents(store, cfg.preprocessed_dir or cfg.train_files or
                       (f"data.hf_dataset {sources.hf_description(hf)}" if hf.name else "the built-in corpus"))
    holdout = cfg.eval_samples if not eval_files else 0
    if holdout >= store.num_documents:
        raise DataError(f"eval_samples {holdout} leaves no training documents (the corpus has {store.num_documents})")
    is_eval = np.zeros(store.num_documents, dtype=bool)
    is_eval[np.random.default_rng(_HOLDOUT_SEED).choice(store.num_documents, holdout, replace=False)] = True
    return store, np.flatnonzero(is_eval if split == "eval" else ~is_eval), holdout


def _require_documents(store: TokenStore, where) -> None:
    if store.num_documents == 0:
        read = store.read_stats
        raise DataError(
            f"empty corpus: no documents in {where} "
            f"({read.empty_skipped} empty, {read.bad_records_skipped} bad records skipped)"
        )


def _tokenize(files: list[str], cfg, tokenizer) -> TokenStore:
    identity = json.dumps([(f, os.stat(f).st_mtime_ns) for f in files] + sources.describe_files(files))
    return _tokenized_files(tuple(files), identity, cfg.text_field, cfg.skip_bad_records, tokenizer)


@functools.lru_cache(maxsize=2)
def _tokenized_files(files: tuple[str, ...], identity: str, text_field: str, skip_bad: bool, tokenizer) -> TokenStore:
    """Raw text tokenized into memory; cached so the train and eval iterators share one pass.

    Every process tokenizes the whole corpus: the packing plan, and so the epoch length, must be
    the same everywhere. For large corpora use scripts/preprocess.py, which does this once.
    """
    read_stats = sources.ReadStats()
    texts = sources.read_documents(files, text_field=text_field, skip_bad_records=skip_bad, stats=read_stats)
    return TokenStore.from_texts(texts, TextEncoder(tokenizer), read_stats)


@functools.lru_cache(maxsize=2)
def _tokenized_hf(settings: str, text_field: str, skip_bad: bool, tokenizer) -> TokenStore:
    """A non-streamed `data.hf_dataset`, tokenized into memory like files (cached for the eval split)."""
    read_stats = sources.ReadStats()
    hf = ml_collections.ConfigDict(json.loads(settings))
    texts = sources.hf_documents(hf, text_field=text_field, skip_bad_records=skip_bad, stats=read_stats)
    return TokenStore.from_texts(texts, TextEncoder(tokenizer), read_stats)
