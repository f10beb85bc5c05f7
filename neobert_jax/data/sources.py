"""Reading documents (one string each) from the users' local corpora.

Supported: `.txt` (one document per line), `.jsonl` and `.parquet` (a configurable text field), a
`datasets` folder written by `save_to_disk`, and globs or lists of these. `data.hf_dataset` reads a
`datasets.load_dataset` result (hub name or a local builder) through the same record checks.
Every document that is skipped or altered is counted in `ReadStats`; a bad record stops reading with
a message naming file and line, unless `skip_bad_records` asks to count and skip it instead.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import json
import os
from collections.abc import Iterator, Sequence

from neobert_jax.data.builtin_corpus import NAME as BUILTIN_NAME
from neobert_jax.data.builtin_corpus import builtin_documents
from neobert_jax.data.errors import DataError

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)
PARQUET_SUFFIXES = (".parquet",)
_DATASETS_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")
_ARROW_BATCH_ROWS = 8192


@dataclasses.dataclass
class ReadStats:
    """What happened to the input while reading it (summed over all files)."""

    files: int = 0
    documents: int = 0  # documents handed on to tokenization
    empty_skipped: int = 0  # blank lines, empty or whitespace-only texts
    bad_records_skipped: int = 0  # only with skip_bad_records
    invalid_utf8_replaced: int = 0  # documents whose undecodable bytes became U+FFFD

    def add(self, other: "ReadStats") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def resolve_files(spec: str | Sequence[str] | None, what: str = "train_files") -> list[str]:
    """Expands a path, glob, comma-separated string or list of them into an ordered file list.

    An empty spec gives []; for the training split that means the built-in corpus.
    """
    entries = [spec] if isinstance(spec, str) else list(spec or [])
    entries = [part.strip() for entry in entries for part in str(entry).split(",") if part.strip()]
    files: list[str] = []
    for entry in entries:
        entry = os.path.expanduser(entry)
        if glob.has_magic(entry):
            matches = sorted(glob.glob(entry, recursive=True))
            if not matches:
                raise DataError(f"{what}: no file matches {entry!r}")
        elif not os.path.exists(entry):
            raise DataError(
                f"{what}: {entry}: no such file or directory "
                "(local files only; for hub datasets set data.hf_dataset.name instead)"
            )
        else:
            matches = [entry]
        for path in matches:
            _check_supported(path, what)
            if path not in files:
                files.append(path)
    return files


def _is_datasets_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in _DATASETS_MARKERS)


def _check_supported(path: str, what: str) -> None:
    if os.path.isdir(path):
        if not _is_datasets_dir(path):
            raise DataError(
                f"{what}: {path} is a folder but not a `datasets` save_to_disk folder; "
                "name its files with a glob such as dir/*.txt"
            )
    elif not path.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES):
        raise DataError(f"{what}: {path}: unsupported file type (expected .txt, .jsonl, .parquet or a datasets folder)")


def describe_files(files: Sequence[str]) -> list[dict]:
    """Identity of a corpus (absolute paths and sizes) for cache fingerprints."""
    if not files:
        return [{"path": BUILTIN_NAME}]
    return [{"path": os.path.abspath(f), "bytes": _total_bytes(f)} for f in files]


def _total_bytes(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names)
    return os.path.getsize(path)


def read_documents(
    files: Sequence[str], *, text_field: str = "text", skip_bad_records: bool = False, stats: ReadStats
) -> Iterator[str]:
    """Yields the stripped, non-empty documents of `files` in order (no files: the built-in corpus)."""
    if not files:
        stats.files += 1
        for text in builtin_documents():
            yield from _accept(text, stats)
        return
    for path in files:
        stats.files += 1
        if os.path.isdir(path):
            yield from _read_arrow_batches(path, _datasets_batches(path, text_field), skip_bad_records, stats)
        elif path.endswith(PARQUET_SUFFIXES):
            yield from _read_arrow_batches(path, _parquet_batches(path, text_field), skip_bad_records, stats)
        else:
            yield from _read_lines(path, text_field, path.endswith(JSONL_SUFFIXES), skip_bad_records, stats)


def _accept(text: str, stats: ReadStats) -> Iterator[str]:
    text = text.strip()
    if text:
        stats.documents += 1
        yield text
    else:
        stats.empty_skipped += 1


def _read_lines(path: str, text_field: str, is_jsonl: bool, skip_bad: bool, stats: ReadStats) -> Iterator[str]:
    """Lines split on b'\\n' only (so U+2028 etc. stay inside a document), decoded as UTF-8.

    A file whose first lines are mostly undecodable or control bytes is refused as binary:
    replacing them would train on noise (a binary file need not contain a NUL byte).
    """
    probed = suspicious = line_number = 0
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            if line_number == _BINARY_PROBE_LINES + 1:
                _check_not_binary(path, suspicious, probed)
            if line_number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if b"\0" in raw:
                raise DataError(
                    f"{path}:{line_number}: NUL byte: a binary file (or UTF-16 text); expected UTF-8 text"
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                stats.invalid_utf8_replaced += 1
                suspicious += line.count("\ufffd") if line_number <= _BINARY_PROBE_LINES else 0
            if line_number <= _BINARY_PROBE_LINES:
                probed += len(raw)
                suspicious += len(raw.translate(None, _TEXT_BYTES))  # control bytes
            if not is_jsonl:
                yield from _accept(line, stats)
            elif not line.strip():
                stats.empty_skipped += 1
            else:
                text, problem = _jsonl_text(line, text_field)
                if problem is None:
                    yield from _accept(text, stats)
                elif skip_bad:
                    stats.bad_records_skipped += 1
                else:
                    hint = "set skip_bad_records to count and skip such lines"
                    raise DataError(f"{path}:{line_number}: {problem} ({hint})")
    if line_number <= _BINARY_PROBE_LINES:
        _check_not_binary(path, suspicious, probed)


_BINARY_PROBE_LINES = 64
_TEXT_BYTES = bytes([9, 10, 11, 12, 13, *range(32, 256)])


def _check_not_binary(path: str, suspicious: int, probed: int) -> None:
    if suspicious * 10 > probed * 3:
        raise DataError(f"{path}: {suspicious} of its first {probed} bytes are control bytes or not UTF-8: a binary "
                        "file? expected UTF-8 text")


def _jsonl_text(line: str, text_field: str) -> tuple[str, None] | tuple[None, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    if text_field not in record:
        return None, f"no field {text_field!r} (fields: {', '.join(sorted(record)) or 'none'})"
    text = record[text_field]
    if not isinstance(text, str):
        return None, f"field {text_field!r} is {type(text).__name__}, expected a string"
    return text, None


def _parquet_batches(path: str, text_field: str) -> Iterator[list]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        _check_text_column(path, parquet.schema_arrow, text_field)
        for batch in parquet.iter_batches(batch_size=_ARROW_BATCH_ROWS, columns=[text_field]):
            yield batch.column(0).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


def load_datasets_dir(path: str):
    """A `save_to_disk` folder of one split, as a `datasets.Dataset`; errors name the folder."""
    import datasets

    try:
        dataset = datasets.load_from_disk(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable datasets folder ({e})") from None
    if isinstance(dataset, datasets.DatasetDict):
        splits = sorted(dataset)
        raise DataError(f"{path}: a DatasetDict with splits {splits}; pass one split folder, e.g. {path}/{splits[0]}")
    return dataset


def _datasets_batches(path: str, text_field: str) -> Iterator[list]:
    dataset = load_datasets_dir(path)
    _check_text_column(path, dataset.data.schema, text_field)
    for table in dataset.select_columns([text_field]).with_format("arrow").iter(batch_size=_ARROW_BATCH_ROWS):
        yield table.column(0).to_pylist()


def _check_text_column(path: str, schema, text_field: str) -> None:
    """`schema` is a pyarrow schema: Parquet files and `datasets` folders are both Arrow tables."""
    if text_field not in schema.names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)}); set text_field")
    dtype = str(schema.field(text_field).type)
    if dtype not in ("string", "large_string"):
        raise DataError(f"{path}: column {text_field!r} holds {dtype}, expected strings")


def _read_arrow_batches(path: str, batches: Iterator[list], skip_bad: bool, stats: ReadStats) -> Iterator[str]:
    row = 0
    for texts in batches:
        for text in texts:
            row += 1
            if text is not None:
                yield from _accept(text, stats)
            elif skip_bad:
                stats.bad_records_skipped += 1
            else:
                raise DataError(f"{path}:row {row}: text is null (set skip_bad_records to count and skip such rows)")


def load_hf_dataset(hf, streaming: bool):
    """`datasets.load_dataset` of the `data.hf_dataset` settings; a failure is one error naming the key."""
    import datasets

    files = resolve_hf_data_files(hf.data_files)
    try:
        return datasets.load_dataset(hf.name, hf.config or None, split=hf.split or None,
                                     data_files=files or None, streaming=streaming)
    except Exception as e:  # the hub, the builders and fsspec raise many types; all mean "cannot load"
        raise DataError(f"data.hf_dataset.name: cannot load {hf.name!r} (config {hf.config!r}, split "
                        f"{hf.split!r}): {type(e).__name__}: {e}") from None


def resolve_hf_data_files(spec) -> list[str]:
    """data_files as a list: a path, glob or "a,b" string, or a list (hub paths are passed on as given)."""
    entries = [spec] if isinstance(spec, str) else list(spec or [])
    return [part.strip() for entry in entries for part in str(entry).split(",") if part.strip()]


def hf_description(hf) -> str:
    """What the run reads, for log lines and cache keys."""
    files = resolve_hf_data_files(hf.data_files)
    return (f"{hf.name}" + (f"/{hf.config}" if hf.config else "") + f" split {hf.split!r}"
            + (f" data_files {files}" if files else ""))


def check_text_feature(where: str, columns, text_field: str) -> None:
    """A missing text column is a settings problem, never a bad record: one error naming data.text_field."""
    if columns is not None and text_field not in columns:
        raise DataError(f"data.text_field: {where} has no column {text_field!r} (columns: {', '.join(columns)})")


def hf_documents(hf, *, text_field: str, skip_bad_records: bool, stats: ReadStats) -> Iterator[str]:
    """The documents of a non-streamed `data.hf_dataset`, checked and counted as files' are."""
    import datasets

    dataset = load_hf_dataset(hf, streaming=False)
    where = f"data.hf_dataset {hf_description(hf)}"
    if isinstance(dataset, datasets.DatasetDict):
        raise DataError(f"data.hf_dataset.split: {where} is a DatasetDict with splits {sorted(dataset)}; name one")
    check_text_feature(where, dataset.column_names, text_field)
    _check_text_column(where, dataset.data.schema, text_field)
    stats.files += 1
    batches = (t.column(0).to_pylist() for t in
               dataset.select_columns([text_field]).with_format("arrow").iter(batch_size=_ARROW_BATCH_ROWS))
    yield from _read_arrow_batches(where, batches, skip_bad_records, stats)
