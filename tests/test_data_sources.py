"""Reading corpora: every supported format, and a clear one-line error for every kind of bad input."""

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neobert_jax.data import DataError
from neobert_jax.data.sources import ReadStats, read_documents, resolve_files


def read(files, **options):
    stats = ReadStats()
    return list(read_documents(files, stats=stats, **options)), stats


def test_txt_one_document_per_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbffirst line\r\n\n   \nsecond\xe2\x80\xa8same document\n  third  \nno newline at end")
    docs, stats = read([str(path)])
    assert docs == ["first line", "second\u2028same document", "third", "no newline at end"]
    assert (stats.documents, stats.empty_skipped, stats.invalid_utf8_replaced) == (4, 2, 0)


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"good\nbad \xff\xfe bytes\nalso \xc3 bad\n")
    docs, stats = read([str(path)])
    assert docs == ["good", "bad \ufffd\ufffd bytes", "also \ufffd bad"]
    assert stats.invalid_utf8_replaced == 2


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"body": "one", "id": 1}\n\n{"body": "two \\u00e9"}\n')
    docs, stats = read([str(path)], text_field="body")
    assert docs == ["one", "two \u00e9"] and stats.empty_skipped == 1


@pytest.mark.parametrize(
    "line, problem",
    [
        ("{not json", "not valid JSON"),
        ('{"title": "x"}', "no field 'text' (fields: title)"),
        ('["a list"]', "expected a JSON object"),
        ('{"text": 3}', "field 'text' is int"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "a.jsonl"
    path.write_text(f'{{"text": "fine"}}\n{line}\n{{"text": "after"}}\n')
    with pytest.raises(DataError, match=rf"a\.jsonl:2: .*{re.escape(problem)}"):
        read([str(path)])
    docs, stats = read([str(path)], skip_bad_records=True)
    assert docs == ["fine", "after"] and stats.bad_records_skipped == 1


def test_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["x y", " ", None, "z"], "n": [1, 2, 3, 4]}), path)
    with pytest.raises(DataError, match=r"a\.parquet:row 3: text is null"):
        read([str(path)])
    docs, stats = read([str(path)], skip_bad_records=True)
    assert docs == ["x y", "z"] and (stats.empty_skipped, stats.bad_records_skipped) == (1, 1)
    with pytest.raises(DataError, match=r"a\.parquet: no column 'body' \(columns: text, n\)"):
        read([str(path)], text_field="body")
    with pytest.raises(DataError, match=r"a\.parquet: column 'n' holds int64, expected strings"):
        read([str(path)], text_field="n")


def test_datasets_folder(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_dict({"text": ["alpha", "beta"]})
    dataset.save_to_disk(str(tmp_path / "ds"))
    assert read(resolve_files(str(tmp_path / "ds")))[0] == ["alpha", "beta"]
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"DatasetDict with splits \['test', 'train'\]; pass one split folder"):
        read(resolve_files(str(tmp_path / "dd")))
    assert read(resolve_files(str(tmp_path / "dd" / "test")))[0] == ["alpha", "beta"]


def test_resolve_globs_lists_and_commas(tmp_path):
    for name in ("b.txt", "a.txt", "c.jsonl"):
        (tmp_path / name).write_text("x\n")
    a, b, c = (str(tmp_path / n) for n in ("a.txt", "b.txt", "c.jsonl"))
    assert resolve_files(str(tmp_path / "*.txt")) == [a, b]
    assert resolve_files([c, str(tmp_path / "*.txt"), a]) == [c, a, b]
    assert resolve_files(f"{c}, {a}") == [c, a]
    assert resolve_files("") == [] and resolve_files(None) == []


@pytest.mark.parametrize(
    "entry, message",
    [
        ("missing.txt", r"missing\.txt: no such file or directory \(local files only"),
        ("someorg/some-dataset", r"some-dataset: no such file or directory \(local files only; for hub datasets set data\.hf_dataset\.name"),
        ("*.nothing", r"no file matches '.*\*\.nothing'"),
        ("table.csv", r"table\.csv: unsupported file type"),
        ("folder", r"folder is a folder but not a `datasets` save_to_disk folder"),
    ],
)
def test_bad_paths(tmp_path, monkeypatch, entry, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "table.csv").write_text("a,b\n")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=rf"train_files: .*{message}"):
        resolve_files(entry)


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_bytes(b"PK\x03\x04" + bytes(range(14, 78)) + b"\x00\x00\x00")  # no newline before the NUL
    with pytest.raises(DataError, match=r"weights\.txt:1: NUL byte: a binary file"):
        read([str(path)])
    with pytest.raises(DataError, match=r"not a readable Parquet file"):
        (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
        read([str(tmp_path / "x.parquet")])


def test_no_files_means_the_builtin_corpus():
    docs, stats = read([])
    assert len(docs) == stats.documents > 10_000 and len(set(docs)) == len(docs)
    assert 1_500_000 < sum(map(len, docs)) < 3_000_000
    assert all("\n" not in d and d == d.strip() for d in docs)


def test_builtin_corpus_is_cached_on_disk_and_identical(tmp_path, monkeypatch):
    from neobert_jax.data import builtin_corpus

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    builtin_corpus.builtin_documents.cache_clear()
    try:
        first = builtin_corpus.builtin_documents()
        cached = list((tmp_path / "neobert_jax").glob("builtin_corpus-*.txt"))
        assert len(cached) == 1 and cached[0].read_text(encoding="utf-8").count("\n") == len(first) - 1
        builtin_corpus.builtin_documents.cache_clear()
        assert builtin_corpus.builtin_documents() == first  # the cache's text is the build (`first`, a cache miss)
    finally:
        builtin_corpus.builtin_documents.cache_clear()
