"""Tokenized documents: flat token arrays plus a table of document lengths.

The same store serves raw text (tokenized into memory at startup) and preprocessed corpora
(`scripts/preprocess.py`: shard files memory-mapped, so a process only pages in the tokens of the
rows it reads). A preprocessed folder holds `tokens-NNNNN.bin` (raw ids, uint16 or uint32),
`lengths-NNNNN.npy` (tokens per document), `meta.json` and a copy of the tokenizer.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Iterator

import numpy as np

from neobert_jax.data import tokenizer as tokenizers
from neobert_jax.fileio import atomic_dir
from neobert_jax.data.errors import DataError
from neobert_jax.data.sources import ReadStats

FORMAT = "neobert_jax.token_store/1"
META_FILE = "meta.json"
DEFAULT_SHARD_TOKENS = 1 << 28  # 512 MiB of uint16 ids per shard file
_ENCODE_BATCH = 4096


class TokenStore:
    """Documents as token ids: `doc_lengths[i]` tokens of document i, read back with `gather`."""

    def __init__(self, shards: list[np.ndarray], shard_lengths: list[np.ndarray], read_stats: ReadStats):
        lengths = [np.asarray(x, dtype=np.int64) for x in shard_lengths] or [np.zeros(0, np.int64)]
        self._shards = shards
        self.doc_lengths = np.concatenate(lengths)
        self._doc_shard = np.repeat(np.arange(len(lengths)), [len(x) for x in lengths])
        self._doc_start = np.concatenate([np.cumsum(x) - x for x in lengths])  # inside its shard
        self.read_stats = read_stats

    @property
    def num_documents(self) -> int:
        return len(self.doc_lengths)

    def gather(self, doc_N: np.ndarray, offset_N: np.ndarray) -> np.ndarray:
        """Token `offset_N[i]` of document `doc_N[i]`, as int32."""
        position_N = self._doc_start[doc_N] + offset_N
        if len(self._shards) == 1:
            return self._shards[0][position_N].astype(np.int32)
        shard_N = self._doc_shard[doc_N]
        ids_N = np.empty(len(doc_N), dtype=np.int32)
        for shard in np.unique(shard_N):
            selected = shard_N == shard
            ids_N[selected] = self._shards[shard][position_N[selected]]
        return ids_N

    @classmethod
    def from_texts(cls, texts: Iterable[str], encoder: tokenizers.TextEncoder, read_stats: ReadStats) -> "TokenStore":
        """Tokenizes all texts into memory (one shard)."""
        ids, lengths = [], []
        for batch_ids, batch_lengths in _encode_batches(texts, encoder):
            ids.append(batch_ids)
            lengths.append(batch_lengths)
        if not lengths:
            return cls([], [], read_stats)
        return cls([np.concatenate(ids)], [np.concatenate(lengths)], read_stats)

    @classmethod
    def open(cls, directory: str, tokenizer) -> "TokenStore":
        """Memory-maps a preprocessed folder after checking it was made with `tokenizer`."""
        meta = _read_meta(directory)
        if meta["tokenizer"] != tokenizers.vocab_fingerprint(tokenizer):
            raise DataError(
                f"{directory} was tokenized with another tokenizer than the run's; "
                f"use the tokenizer saved in {os.path.join(directory, 'tokenizer')}"
            )
        shards, shard_lengths = [], []
        for shard in meta["shards"]:
            tokens_path = os.path.join(directory, shard["tokens_file"])
            try:
                lengths = np.load(os.path.join(directory, shard["lengths_file"]))
                tokens = np.memmap(tokens_path, dtype=meta["dtype"], mode="r") if shard["tokens"] else np.zeros(0)
            except (OSError, ValueError) as e:
                raise DataError(f"{tokens_path}: cannot be read ({e}); rerun preprocessing") from None
            if len(tokens) != int(lengths.sum()):
                raise DataError(
                    f"{tokens_path}: {len(tokens)} tokens but its lengths say {int(lengths.sum())}; rerun preprocessing"
                )
            shards.append(tokens)
            shard_lengths.append(lengths)
        return cls(shards, shard_lengths, ReadStats(**meta["read_stats"]))


def _encode_batches(texts: Iterable[str], encoder: tokenizers.TextEncoder) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    texts = iter(texts)
    while batch := list(itertools.islice(texts, _ENCODE_BATCH)):
        yield encoder.encode(batch)


def _read_meta(directory: str) -> dict:
    try:
        with open(os.path.join(directory, META_FILE)) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise DataError(
            f"preprocessed_dir {directory}: no {META_FILE}; not a folder written by scripts/preprocess.py"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{os.path.join(directory, META_FILE)}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{directory}: format {meta.get('format')!r}, expected {FORMAT!r}; rerun preprocessing")
    return meta


def write_store(
    out_dir: str,
    texts: Iterable[str],
    tokenizer,
    read_stats: ReadStats,
    *,
    sources: list[dict],
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
) -> dict:
    """Tokenizes `texts` into shard files under `out_dir`, built in a temp folder and renamed at the end.

    `read_stats` must be the stats object the `texts` iterator counts into. Returns the meta dict.
    """
    if shard_tokens <= 0:  # a shard would never fill: one file per batch, forever
        raise DataError(f"shard_tokens={shard_tokens}: must be positive")
    encoder = tokenizers.TextEncoder(tokenizer)
    with atomic_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp_dir:
        shards = _write_shards(tmp_dir, _encode_batches(texts, encoder), encoder.dtype, shard_tokens)
        if not shards:
            raise DataError(
                f"no documents to preprocess ({read_stats.empty_skipped} empty, "
                f"{read_stats.bad_records_skipped} bad records skipped)"
            )
        tokenizers.save_tokenizer(tokenizer, os.path.join(tmp_dir, "tokenizer"))
        meta = {
            "format": FORMAT,
            "dtype": encoder.dtype.str,
            "documents": sum(s["documents"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
            "read_stats": dataclasses.asdict(read_stats),
            "tokenizer": tokenizers.vocab_fingerprint(tokenizer),
            "sources": sources,
        }
        with open(os.path.join(tmp_dir, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
    return meta


def _write_shards(directory: str, batches, dtype: np.dtype, shard_tokens: int) -> list[dict]:
    """Streams encoded batches into shard files. A shard is closed once it holds `shard_tokens`
    tokens, so it overshoots by less than one document: a document never spans two shards."""
    writer = _ShardWriter(directory, dtype)
    for ids, lengths in batches:
        ends = np.cumsum(lengths)
        first = 0
        while first < len(lengths):
            base = int(ends[first - 1]) if first else 0
            stop = min(len(lengths), int(np.searchsorted(ends, base + shard_tokens - writer.tokens)) + 1)
            writer.write(ids[base : ends[stop - 1]], lengths[first:stop])
            if writer.tokens >= shard_tokens:
                writer.close()
            first = stop
    writer.close()
    return writer.shards


class _ShardWriter:
    def __init__(self, directory: str, dtype: np.dtype):
        self._directory, self._dtype = directory, dtype
        self.shards: list[dict] = []
        self._file, self._lengths, self.tokens = None, [], 0

    def write(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        if self._file is None:
            name = f"{len(self.shards):05d}"
            self.shards.append({"tokens_file": f"tokens-{name}.bin", "lengths_file": f"lengths-{name}.npy"})
            self._file = open(os.path.join(self._directory, self.shards[-1]["tokens_file"]), "wb")
        self._file.write(np.ascontiguousarray(ids, dtype=self._dtype).tobytes())
        self._lengths.append(lengths)
        self.tokens += len(ids)

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        lengths = np.concatenate(self._lengths).astype(np.uint32)
        np.save(os.path.join(self._directory, self.shards[-1]["lengths_file"]), lengths)
        self.shards[-1].update(documents=len(lengths), tokens=self.tokens)
        self._file, self._lengths, self.tokens = None, [], 0
