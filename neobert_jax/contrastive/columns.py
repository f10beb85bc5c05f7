"""Reading multi-column records (sentence-transformers' conventions) from local files.

Training files hold one example per record: text columns in order (anchor, positive, negatives...)
for the ranking losses, one text column for SimCSE, one text column plus a vector column
(`label`) for MSE distillation. Columns are taken in the file's own order unless named. `.txt`
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
    "simcse": "one text column",
    "mse": "one text column and a vector column (data.label_column)",
}


@dataclasses.dataclass
class ColumnData:
    names: list[str]  # the text columns, in order (names of the first file)
    texts: list[list[str]]  # [column][example]
    vectors: np.ndarray | None  # (examples, D) float32 teacher vectors (mse), else None


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


def text_columns_for(path: str, available: Sequence[str], loss: str, columns: Sequence[str],
                     label_column: str) -> list[str]:
    """The text columns `loss` reads from a file with `available` columns, checked."""
    wanted = _COLUMNS_WANTED[loss]
    if loss == "mse" and label_column not in available:
        raise DataError(f"{path}: no column {label_column!r} (columns: {', '.join(available)}); loss mse needs "
                        f"{wanted}: set data.label_column")
    if columns:
        for name in columns:
            if name not in available:
                raise DataError(f"{path}: no column {name!r} (columns: {', '.join(available)}); see data.columns")
        chosen = list(columns)
    else:
        chosen = [name for name in available if not (loss == "mse" and name == label_column)]
    if loss == "mnrl" and len(chosen) < 2:
        hint = "; a .txt file holds single texts: use loss simcse" if path.endswith(".txt") else ""
        raise DataError(f"{path}: loss mnrl needs {wanted}, found {', '.join(map(repr, chosen)) or 'none'}{hint}")
    if loss in ("simcse", "mse") and len(chosen) != 1:
        if not chosen:
            raise DataError(f"{path}: loss {loss} needs {wanted}, found none")
        raise DataError(f"{path}: column {chosen[1]!r} is not used by loss {loss}, which takes {wanted}; "
                        "pick the text column with data.columns or use loss mnrl for pairs and negatives")
    return chosen


def read_training_columns(files: Sequence[str], *, loss: str, columns: Sequence[str], label_column: str,
                          vector_dim: int) -> ColumnData:
    """All examples of `files`, checked against what `loss` needs (`vector_dim`: the model's width)."""
    if not files:
        raise DataError("data.train_files: no files given")
    names, texts, vectors, first = None, None, [], None
    for path in files:
        table = open_table(path)
        if len(table) == 0:
            raise DataError(f"{path}: no records")
        chosen = text_columns_for(path, table.names, loss, columns, label_column)
        if names is None:
            names, texts, first = chosen, [[] for _ in chosen], path
        elif len(chosen) != len(names):
            raise DataError(f"{path}: {len(chosen)} text columns ({', '.join(chosen)}) but {first} has {len(names)} "
                            f"({', '.join(names)}); every file of a run needs the same columns")
        for column, name in zip(texts, chosen):
            column.extend(table.texts(name))
        if loss == "mse":
            vectors.append(table.vectors(label_column, vector_dim))
    return ColumnData(names, texts, np.concatenate(vectors) if vectors else None)
