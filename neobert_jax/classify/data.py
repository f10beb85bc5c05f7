"""Labelled texts: reading them (CSV, TSV, JSONL, Parquet), their label names and targets, their
tokens, and the width of their rows (the training batches: packing.py).

Every bad record is a DataError naming file, row and column. Texts (or pairs) longer than
train.seq_len are cut as the tokenizer's own `longest_first` truncation cuts them, which is what a
transformers pipeline feeds the exported model, and counted for the run's start lines.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import math
import os

import numpy as np

from neobert_jax.contrastive.columns import Table, open_table
from neobert_jax.data.errors import DataError

MULTI_LABEL_SEPARATOR = ";"
SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclasses.dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: list  # single-label: a name; multi-label: a list of names; regression: a float
    locations: list[str]  # "file:line" of each example, for errors


def _delimited_table(path: str, delimiter: str) -> Table:
    records, lines = [], []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for record in reader:
            if any(value is None for value in record.values()) or None in record:
                raise DataError(f"{path}:{reader.line_num}: {'more' if None in record else 'fewer'} fields than the "
                                f"header's {len(reader.fieldnames)} ({', '.join(reader.fieldnames)})")
            records.append(record)
            lines.append(reader.line_num)
        names = list(reader.fieldnames or [])
    return Table(path, names, records=records, line_numbers=lines)


def resolve_files(spec, what: str, suffixes: tuple[str, ...] = SUFFIXES) -> list[str]:
    """A path, glob, "a,b" string or list of them -> the files, each checked to exist and be read here."""
    entries = [spec] if isinstance(spec, str) else list(spec or [])
    files = []
    for entry in (part.strip() for item in entries for part in str(item).split(",") if part.strip()):
        matches = sorted(glob.glob(os.path.expanduser(entry))) if glob.has_magic(entry) else [os.path.expanduser(entry)]
        if not matches or not os.path.exists(matches[0]):
            raise DataError(f"{what}: {entry}: no such file" if matches else f"{what}: no file matches {entry!r}")
        for path in matches:
            if not (path.endswith(suffixes) or os.path.isdir(path)):
                raise DataError(f"{what}: {path}: unsupported file type (expected {', '.join(suffixes)} or a "
                                "datasets folder)")
            files.append(path)
    return files


def read_table(path: str) -> Table:
    if path.endswith(".csv"):
        return _delimited_table(path, ",")
    if path.endswith(".tsv"):
        return _delimited_table(path, "\t")
    return open_table(path)


def _label_value(value, problem_type: str, where: str, column: str):
    if problem_type == "regression":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise DataError(f"{where}: column {column!r} holds {value!r}, expected a number (regression)") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{where}: column {column!r} holds {value!r}, expected a finite number (regression)")
        return float(value)
    if problem_type == "multi_label_classification":
        if isinstance(value, str):
            value = value.split(MULTI_LABEL_SEPARATOR)
        if not isinstance(value, (list, tuple)):
            raise DataError(f"{where}: column {column!r} holds {value!r}, expected a list of labels or "
                            f"names separated by {MULTI_LABEL_SEPARATOR!r}")
        return sorted({str(v).strip() for v in value if str(v).strip()})
    if value is None or isinstance(value, (list, dict)) or not str(value).strip():
        raise DataError(f"{where}: column {column!r} holds {value!r}, expected one label")
    return str(value).strip()


def read_examples(files: list[str], data_cfg, problem_type: str) -> Examples:
    texts, pairs, labels, locations = [], [] if data_cfg.text_pair_column else None, [], []
    for path in files:
        table = read_table(path)
        if len(table) == 0:
            raise DataError(f"{path}: no records")
        texts += table.texts(data_cfg.text_column)
        if pairs is not None:
            pairs += table.texts(data_cfg.text_pair_column)
        for i, value in enumerate(table.column(data_cfg.label_column)):
            labels.append(_label_value(value, problem_type, table.location(i), data_cfg.label_column))
            locations.append(table.location(i))
    return Examples(texts, pairs, labels, locations)


def _name_key(name: str):
    """Numbers in numeric order, before other names."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def label_names(examples: Examples, problem_type: str, given: list[str]) -> list[str]:
    """`given`, else the training labels sorted; regression has none."""
    if problem_type == "regression":
        return []
    if given:
        return list(given)
    seen = {name for value in examples.labels for name in ([value] if isinstance(value, str) else value)}
    return sorted(seen, key=_name_key)


def targets(examples: Examples, problem_type: str, names: list[str], column: str) -> np.ndarray:
    """int32 (n,) label indices, float32 (n, labels) multi-hot, or float32 (n,) values; a label
    outside `names` is an error naming its row."""
    if problem_type == "regression":
        return np.asarray(examples.labels, np.float32)
    index = {name: i for i, name in enumerate(names)}
    out = np.zeros((len(examples.labels), len(names)), np.float32) if problem_type != "single_label_classification" \
        else np.zeros(len(examples.labels), np.int32)
    for row, (value, where) in enumerate(zip(examples.labels, examples.locations)):
        for name in [value] if isinstance(value, str) else value:
            if name not in index:
                raise DataError(f"{where}: column {column!r}: label {name!r} is not one of the run's labels "
                                f"{names} (data.labels, else init_from's id2label, else the training data's)")
            if out.ndim == 1:
                out[row] = index[name]
            else:
                out[row, index[name]] = 1.0
    return out


@dataclasses.dataclass
class Encoded:
    ids: list[np.ndarray]  # each example's ids with the tokenizer's specials, cut to seq_len
    targets: np.ndarray
    truncated: int  # examples that were cut

    def __len__(self) -> int:
        return len(self.ids)


class PairTokenizer:
    """Texts (or pairs) -> ids with the tokenizer's template, cut to `seq_len` tokens."""

    def __init__(self, tokenizer, seq_len: int):
        from tokenizers import Tokenizer

        self.full = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.full.no_truncation()
        self.full.no_padding()
        self.cut = Tokenizer.from_str(self.full.to_str())
        self.cut.enable_truncation(seq_len, strategy="longest_first")
        self.seq_len = seq_len
        self.pad_id = tokenizer.pad_token_id

    def encode(self, texts: list[str], pairs: list[str] | None) -> tuple[list[np.ndarray], int]:
        inputs = texts if pairs is None else list(zip(texts, pairs))
        ids = [np.asarray(e.ids, np.int32) for e in self.full.encode_batch_fast(inputs)]
        long = [i for i, row in enumerate(ids) if len(row) > self.seq_len]
        for i, e in zip(long, self.cut.encode_batch_fast([inputs[i] for i in long])):
            ids[i] = np.asarray(e.ids, np.int32)
        return ids, len(long)


def encode(examples: Examples, tokenizer: PairTokenizer, target_array: np.ndarray) -> Encoded:
    ids, truncated = tokenizer.encode(examples.texts, examples.pairs)
    return Encoded(ids, target_array, truncated)


ROW_MULTIPLE = 64  # row lengths are rounded up to this (GPU tiles; few distinct shapes)


def row_length(ids: list[np.ndarray], seq_len: int) -> int:
    """The tokens each row of a set holds: its longest example rounded up to ROW_MULTIPLE, at most
    `seq_len`. Short texts are the common case, and rows of seq_len would multiply the attention's
    work for nothing; one width per set keeps one compiled shape."""
    longest = max((len(row) for row in ids), default=1)
    return min(seq_len, -(-longest // ROW_MULTIPLE) * ROW_MULTIPLE)
