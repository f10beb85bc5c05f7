"""Reading multi-column records (sentence-transformers' conventions) from local files.

Training files hold one example per record: text columns in order (anchor, positive, negatives...)
for the ranking losses, one text column for SimCSE, one text column plus a vector column
(`label`) for MSE distillation, text columns plus a score column (`score` or `label`: a number or
a list of numbers per example) for CoSENT, MarginMSE and listwise KL distillation, as
sentence-transformers' trainer takes them. Columns are taken in the file's own order unless named. `.txt`
files are single-text columns (one text per line). Every problem is a DataError naming the file,
the line or row, and the column.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from neobert_jax.data import sources
from neobert_jax.data.errors import DataError

TXT_COLUMN = "text"
_COLUMNS_WANTED = {
    "mnrl": "(anchor, positive[, negative, ...]) text columns",
    "gte": "(anchor, positive[, negative, ...]) text columns",
    "simcse": "one text column",
    "mse": "one text column and a vector column (data.label_column)",
    "cosent": "two text columns (sentence1, sentence2) and a score column",
    "margin_mse": "(query, positive, negative[, negative, ...]) text columns and a margin/score column",
    "distill_kl": "(query, candidate, candidate[, ...]) text columns and a teacher-score column",
}
SCORE_LOSSES = ("cosent", "margin_mse", "distill_kl")
MIXED_COLUMN_LOSSES = ("mnrl", "gte")  # whose sources may differ in text columns (pairs beside triplets)
DEFAULT_SCORE_COLUMNS = ("score", "label")  # the first present, when data.score_columns is ""


@dataclasses.dataclass
class ColumnData:
    names: list[str]  # the text columns, in order (names of the first file)
    texts: list[list[str]]  # [column][example]
    # (examples, D) float32 teacher vectors (mse) or (examples, K) scores (cosent, margin_mse,
    # distill_kl): the step's per-example `targets`; None for the other losses
    vectors: np.ndarray | None


class Table:
    """One file's records: column names (in file order) and whole columns, with row locations."""

    def __init__(self, path: str, names: list[str], arrow=None, records: list | None = None,
                 line_numbers: list[int] | None = None):
        self.path, self.names = path, names
        self._arrow, self._records, self._lines = arrow, records, line_numbers

    def __len__(self) -> int:
        return self._arrow.num_rows if self._arrow is not None else len(self._records)

    def location(self, i: int) -> str:
        return f"{self.path}:row {i + 1}" if self._arrow is not None else f"{self.path}:{self._lines[i]}"

    def column(self, name: str) -> list:
        """Raw values; a record without the column is an error naming it."""
        if name not in self.names:
            raise DataError(f"{self.path}: no column {name!r} (columns: {', '.join(self.names) or 'none'})")
        if self._arrow is not None:
            return self._arrow.column(name).to_pylist()
        values = []
        for i, record in enumerate(self._records):
            if name not in record:
                raise DataError(f"{self.location(i)}: no column {name!r} (columns: {', '.join(record) or 'none'})")
            values.append(record[name])
        return values

    def texts(self, name: str) -> list[str]:
        values = self.column(name)
        for i, value in enumerate(values):
            if value is None:
                raise DataError(f"{self.location(i)}: column {name!r} is null")
            if not isinstance(value, str):
                raise DataError(f"{self.location(i)}: column {name!r} holds {type(value).__name__}, expected a string")
            if not value.strip():
                raise DataError(f"{self.location(i)}: column {name!r} is empty")
        return values

    def numbers(self, name: str) -> np.ndarray:
        values = self.column(name)
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"{self.location(i)}: column {name!r} holds {type(value).__name__}, expected a number")
        return np.asarray(values, dtype=np.float64)

    def scores(self, name: str) -> np.ndarray:
        """(rows, K) float32 from a column of numbers (K = 1) or of lists of K numbers, all finite."""
        out = []
        for i, value in enumerate(self.column(name)):
            row = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in row) or not row:
                shown = (type(value).__name__ if not isinstance(value, (list, tuple))
                         else "a list with non-numbers" if value else "an empty list")
                raise DataError(f"{self.location(i)}: column {name!r} holds {shown}, expected a number "
                                "or a list of numbers")
            if not np.all(np.isfinite(row)):
                raise DataError(f"{self.location(i)}: column {name!r} holds a non-finite number")
            if out and len(row) != len(out[0]):
                raise DataError(f"{self.location(i)}: column {name!r} has {len(row)} numbers, but the first "
                                f"row has {len(out[0])}")
            out.append(row)
        return np.asarray(out, np.float32).reshape(len(self), -1)

    def vectors(self, name: str, dim: int) -> np.ndarray:
        """(rows, dim) float32; every row must be a list of `dim` numbers."""
        if self._arrow is not None and name in self.names:
            fast = self._arrow_vectors(name, dim)
            if fast is not None:
                return fast
        out = np.empty((len(self), dim), np.float32)
        for i, value in enumerate(self.column(name)):
            if not isinstance(value, (list, tuple)):
                raise DataError(f"{self.location(i)}: column {name!r} holds {type(value).__name__}, "
                                "expected a list of numbers (a teacher vector)")
            if len(value) != dim:
                raise DataError(f"{self.location(i)}: column {name!r} has {len(value)} numbers, but the model's "
                                f"embeddings have {dim}")
            try:
                out[i] = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError):
                raise DataError(f"{self.location(i)}: column {name!r} holds non-numbers") from None
        return out

    def _arrow_vectors(self, name: str, dim: int) -> np.ndarray | None:
        """Vectorized read of a list<number> column; None sends odd columns to the checked slow path."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = self._arrow.column(name).combine_chunks()
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
                or pa.types.is_fixed_size_list(column.type)) or column.null_count:
            return None
        if not (pa.types.is_floating(column.type.value_type) or pa.types.is_integer(column.type.value_type)):
            return None
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dim)
        if len(bad):
            raise DataError(f"{self.location(int(bad[0]))}: column {name!r} has {lengths[bad[0]]} numbers, but the "
                            f"model's embeddings have {dim}")
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.astype(np.float32).reshape(len(self), dim)


def open_table(path: str) -> Table:
    if os.path.isdir(path):
        return Table(path, *_arrow_of_datasets_dir(path))
    if path.endswith(sources.PARQUET_SUFFIXES):
        return Table(path, *_arrow_of_parquet(path))
    if path.endswith(sources.JSONL_SUFFIXES):
        return _jsonl_table(path)
    if path.endswith(sources.TEXT_SUFFIXES):
        stats = sources.ReadStats()
        lines = list(sources.read_documents([path], stats=stats))
        return Table(path, [TXT_COLUMN], records=[{TXT_COLUMN: t} for t in lines],
                     line_numbers=list(range(1, len(lines) + 1)))
    raise DataError(f"{path}: unsupported file type (expected .jsonl, .parquet, .txt or a datasets folder)")


def _arrow_of_parquet(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    return table.column_names, table


def _arrow_of_datasets_dir(path: str):
    table = sources.load_datasets_dir(path).with_format("arrow")[:]
    return table.column_names, table


def _jsonl_table(path: str) -> Table:
    records, lines = [], []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
            lines.append(number)
    names = list(records[0]) if records else []
    return Table(path, names, records=records, line_numbers=lines)


def score_columns_for(path: str, available: Sequence[str], loss: str, score_columns: Sequence[str]) -> list[str]:
    """The number columns of a score loss ([] for the others), checked to exist."""
    if loss not in SCORE_LOSSES:
        return []
    for name in score_columns:
        if name not in available:
            raise DataError(f"{path}: no column {name!r} (columns: {', '.join(available)}); see data.score_columns")
    if score_columns:
        return list(score_columns)
    found = [name for name in DEFAULT_SCORE_COLUMNS if name in available][:1]
    if not found:
        raise DataError(f"{path}: loss {loss} needs {_COLUMNS_WANTED[loss]}, found no 'score' or 'label' column "
                        f"(columns: {', '.join(available)}); name it with data.score_columns")
    return found


def expected_scores(loss: str, text_columns: int) -> tuple[int, ...]:
    """Scores per example each score loss accepts: margin_mse takes margins (one per negative) or
    the teacher's scores of the positive and every negative, as sentence-transformers does."""
    return {"cosent": (1,), "margin_mse": (text_columns - 2, text_columns - 1),
            "distill_kl": (text_columns - 1,)}[loss]


def text_columns_for(path: str, available: Sequence[str], loss: str, columns: Sequence[str],
                     label_column: str, score_columns: Sequence[str] = ()) -> list[str]:
    """The text columns `loss` reads from a file with `available` columns, checked."""
    wanted = _COLUMNS_WANTED[loss]
    if loss == "mse" and label_column not in available:
        raise DataError(f"{path}: no column {label_column!r} (columns: {', '.join(available)}); loss mse needs "
                        f"{wanted}: set data.label_column")
    if columns:
        for name in columns:
            if name not in available:
                mixable = (" (it names every file's columns; left empty, each file's own are taken and pair and "
                           "triplet sources mix)" if loss in MIXED_COLUMN_LOSSES else "")
                raise DataError(f"{path}: no column {name!r} (columns: {', '.join(available)}); see data.columns"
                                f"{mixable}")
        chosen = list(columns)
    else:
        chosen = [name for name in available if not (loss == "mse" and name == label_column)
                  and name not in score_columns]
    minimum = {"mnrl": 2, "gte": 2, "cosent": 2, "margin_mse": 3, "distill_kl": 3}.get(loss, 1)
    if loss == "cosent" and len(chosen) > 2:
        raise DataError(f"{path}: loss cosent takes {wanted}, found {len(chosen)}: "
                        f"{', '.join(map(repr, chosen))}; pick two with data.columns")
    if loss in SCORE_LOSSES and len(chosen) < minimum:
        raise DataError(f"{path}: loss {loss} needs {wanted}, found {', '.join(map(repr, chosen)) or 'none'}")
    if loss in ("mnrl", "gte") and len(chosen) < 2:
        hint = "; a .txt file holds single texts: use loss simcse" if path.endswith(".txt") else ""
        raise DataError(f"{path}: loss {loss} needs {wanted}, found {', '.join(map(repr, chosen)) or 'none'}{hint}")
    if loss in ("simcse", "mse") and len(chosen) != 1:
        if not chosen:
            raise DataError(f"{path}: loss {loss} needs {wanted}, found none")
        raise DataError(f"{path}: column {chosen[1]!r} is not used by loss {loss}, which takes {wanted}; "
                        "pick the text column with data.columns or use loss mnrl for pairs and negatives")
    return chosen


def read_scores(table: Table, names: list[str], loss: str, text_columns: int) -> np.ndarray:
    """(rows, K) float32 scores of a score loss: one column (numbers or lists) or several number columns."""
    if len(names) == 1:
        scores = table.scores(names[0])
    else:  # each column one number per example
        scores = np.stack([table.numbers(name) for name in names], axis=1).astype(np.float32)
        bad = np.argwhere(~np.isfinite(scores))
        if len(bad):
            raise DataError(f"{table.location(int(bad[0, 0]))}: column {names[bad[0, 1]]!r} holds a non-finite number")
    accepted = expected_scores(loss, text_columns)
    if scores.shape[1] not in accepted:
        raise DataError(f"{table.path}: {', '.join(map(repr, names))}: {scores.shape[1]} score(s) per example, but "
                        f"loss {loss} with {text_columns} text columns takes "
                        f"{' or '.join(map(str, accepted))}")
    return scores


def with_prompts(data: ColumnData, query_prompt: str, document_prompt: str) -> ColumnData:
    """The first text column prefixed with the query prompt, the others with the document prompt,
    as sentence-transformers prepends a prompt string before tokenizing."""
    if not query_prompt and not document_prompt:
        return data
    texts = [[(query_prompt if k == 0 else document_prompt) + t for t in column] for k, column in enumerate(data.texts)]
    return dataclasses.replace(data, texts=texts)


def read_training_columns(files: Sequence[str], *, loss: str, columns: Sequence[str], label_column: str,
                          vector_dim: int, score_columns: Sequence[str] = ()) -> ColumnData:
    """All examples of `files`, checked against what `loss` needs (`vector_dim`: the model's width)."""
    if not files:
        raise DataError("data.train_files: no files given")
    names, texts, vectors, first = None, None, [], None
    for path in files:
        table = open_table(path)
        if len(table) == 0:
            raise DataError(f"{path}: no records")
        scored = score_columns_for(path, table.names, loss, score_columns)
        chosen = text_columns_for(path, table.names, loss, columns, label_column, scored)
        if names is None:
            names, texts, first = chosen, [[] for _ in chosen], path
        elif len(chosen) != len(names):
            mixable = " (pairs and triplets mix as separate data.sources)" if loss in MIXED_COLUMN_LOSSES else ""
            raise DataError(f"{path}: {len(chosen)} text columns ({', '.join(chosen)}) but {first} has {len(names)} "
                            f"({', '.join(names)}); every file of a source needs the same columns{mixable}")
        for column, name in zip(texts, chosen):
            column.extend(table.texts(name))
        if loss == "mse":
            vectors.append(table.vectors(label_column, vector_dim))
        elif scored:
            vectors.append(read_scores(table, scored, loss, len(chosen)))
            if vectors[0].shape[1] != vectors[-1].shape[1]:
                raise DataError(f"{path}: {vectors[-1].shape[1]} scores per example but {first} has "
                                f"{vectors[0].shape[1]}")
    return ColumnData(names, texts, np.concatenate(vectors) if vectors else None)


def concat_sources(parts: Sequence[tuple[str, ColumnData]], loss: str) -> tuple[ColumnData, list[int]]:
    """Several sources' columns as one table and each source's size. Under mnrl and gte a source
    may have fewer text columns than another (pairs beside triplets, as sentence-transformers
    allows): the table is as wide as the widest source (its names), a narrower source's missing
    trailing columns hold "" (absent texts, which its steps leave out), so the run keeps one step
    shape. The other losses need the same number of text columns (and scores per example)."""
    (first, data), sizes = parts[0], []
    for name, other in parts:
        if len(other.names) != len(data.names) and loss not in MIXED_COLUMN_LOSSES:
            raise DataError(f"data source {name!r}: {len(other.names)} text columns ({', '.join(other.names)}) but "
                            f"source {first!r} has {len(data.names)} ({', '.join(data.names)}); every source of a "
                            f"run needs the same number for loss {loss} (only mnrl and gte mix them)")
        if other.vectors is not None and other.vectors.shape[1] != data.vectors.shape[1]:
            raise DataError(f"data source {name!r}: {other.vectors.shape[1]} scores per example but source "
                            f"{first!r} has {data.vectors.shape[1]}")
        sizes.append(len(other.texts[0]))
    if len(parts) == 1:
        return data, sizes
    names = max((other.names for _, other in parts), key=len)
    texts = [[] for _ in names]
    for (_, other), size in zip(parts, sizes):
        for k, column in enumerate(texts):
            column.extend(other.texts[k] if k < len(other.texts) else [""] * size)
    vectors = None if data.vectors is None else np.concatenate([other.vectors for _, other in parts])
    return ColumnData(list(names), texts, vectors), sizes
