"""The info-manual retrieval task: node title -> first prose paragraph, duplicates and index/Top
nodes left out (and counted), split by whole manual, written in builtin_retrieval's layout."""

import collections
import glob
import gzip
import json

import pytest

from neobert_jax.contrastive.evaluation import load_retrieval
from neobert_jax.data import info_retrieval
from neobert_jax.data.errors import DataError
from neobert_jax.data.info_retrieval import info_pairs, manual_name, split_by_manual, write_task

SHARED = ("The permission bits of a file are changed with a symbolic mode, which names the users\n"
          "and the operations applied to each of them.")


def node(manual, title, *paragraphs, number="1"):
    underline = "=" * (len(number) + 1 + len(title))
    return (f"\x1f\nFile: {manual}.info,  Node: {title},  Next: Other,  Up: Top\n\n"
            f"{number} {title}\n{underline}\n\n" + "\n\n".join(paragraphs) + "\n\n")


def write_manual(folder, filename, manual, *nodes):
    preamble = f"This is {manual}.info, produced by makeinfo version 6.8 from {manual}.texi.\n\n"
    with gzip.open(folder / filename, "wt", encoding="utf-8") as f:
        f.write(preamble + "".join(nodes))


@pytest.fixture
def info_dir(tmp_path):
    folder = tmp_path / "info"
    folder.mkdir()
    write_manual(folder, "alpha.info.gz", "alpha",
                 node("alpha", "Top", "This manual documents alpha, a program that counts the words in files.",
                      "* Menu:\n\n* Overview::   What alpha does.\n* Invoking alpha::"),
                 node("alpha", "Overview", "Normally alpha is invoked like this:",
                      "     alpha FILE...",
                      "   ‘alpha’ reads each FILE and prints how many words it holds, one\n"
                      "line per file, followed by a\x08 total when more than one file is given."),
                 node("alpha", "Invoking alpha", "* Menu:\n\n* Options::",
                      "*Note Overview::.",
                      "‘alpha’ accepts the options below; see *note Common options: (coreutils)Common\n"
                      "options, for the ones every program shares with the others."),
                 node("alpha", "Permissions", SHARED.replace("symbolic", "‘symbolic’")),
                 node("alpha", "Concept Index", "* Menu:\n\n* counting:      Overview.     (line 6)"))
    write_manual(folder, "beta.info.gz", "beta",
                 node("beta", "Permissions", SHARED),
                 node("beta", "Filters", "A filter reads standard input, transforms the text it finds there and\n"
                      "writes the result to standard output for the next program."),
                 node("beta", "Numbers", "1 2 3 4 5 6 7 8 9 10 11 12 13 14"))
    write_manual(folder, "gamma.info.gz", "gamma",
                 node("gamma", "Gamma rays", "Gamma compresses a stream of records by sorting them into blocks\n"
                      "and coding every block with its own table of frequencies."))
    (folder / "find.info.gz").write_bytes(gzip.compress(
        b"This is find.info\n\n\x1f\nIndirect:\nfind.info-1: 100\nfind.info-2: 900\n\x1f\nTag Table:\n"))
    write_manual(folder, "find.info-1.gz", "find",
                 node("find", "Finding Files", "By default, find prints to the standard output the name of every\n"
                      "file in the tree it walks that matches all of the tests given."))
    write_manual(folder, "find.info-2.gz", "find",
                 node("find", "Invoking xargs", "‘xargs’ builds command lines from the names it reads on standard\n"
                      "input and runs the command once for each batch of names.", number="9"))
    (folder / "broken.info.gz").write_bytes(b"not gzip at all")
    return folder


def test_nodes_become_title_to_first_paragraph_pairs(info_dir):
    skipped = collections.Counter()
    pairs = info_pairs(str(info_dir), skipped)
    assert [(m, q) for m, q, _ in pairs] == [
        ("alpha", "alpha: Overview"), ("alpha", "alpha: Invoking alpha"), ("beta", "beta: Filters"),
        ("find", "find: Finding Files"), ("find", "find: Invoking xargs"), ("gamma", "gamma: Gamma rays")]
    docs = dict((q, d) for _, q, d in pairs)
    assert docs["alpha: Overview"] == ("‘alpha’ reads each FILE and prints how many words it holds, one line per "
                                       "file, followed by a total when more than one file is given.")
    assert docs["alpha: Invoking alpha"] == ("‘alpha’ accepts the options below; see Common options, for the ones "
                                             "every program shares with the others.")
    assert docs["find: Invoking xargs"].startswith("‘xargs’ builds command lines")
    # Top and the index, the permissions text both manuals carry (quote style aside), the digits-only
    # node and the file that is not gzip are all left out, and counted.
    assert skipped == {"top/index nodes": 2, "duplicate documents": 2, "too short": 1, "unreadable files": 1}


@pytest.mark.parametrize("filename, manual", [("find.info-2.gz", "find"), ("find.info.gz", "find"),
                                              ("find-maint.info.gz", "find-maint"), ("gnupg.info-10.gz", "gnupg")])
def test_manual_name_merges_split_files(filename, manual):
    assert manual_name(f"/usr/share/info/{filename}") == manual


def test_split_keeps_each_manual_on_one_side(info_dir):
    pairs = info_pairs(str(info_dir))
    for percent in (10, 30, 50, 90):
        train, test, train_manuals, test_manuals = split_by_manual(pairs, percent)
        assert train and test and not set(train_manuals) & set(test_manuals)
        assert len(train) + len(test) == len(pairs)
        assert {q.split(":")[0] for q, _ in test} == set(test_manuals)
        assert {q.split(":")[0] for q, _ in train} == set(train_manuals)
        assert len(test) <= max(percent * len(pairs) / 100, 1)  # the smallest manual when none fits


def test_write_task_files_load_as_retrieval_and_train_pairs(info_dir, tmp_path, capsys):
    out = tmp_path / "task"
    info_retrieval.main([str(out), "--info-dir", str(info_dir), "--test-percent", "50"])
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: ") and "(4 manuals: " in printed and "1 unreadable files" in printed
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert train and all(set(row) == {"anchor", "positive"} for row in train)
    task = load_retrieval(str(out / "test"))
    assert len(task.queries) == len(task.corpus) == len(task.relevance) >= 1
    assert all(len(r) == 1 for r in task.relevance)
    expected = {q: d for _, q, d in info_pairs(str(info_dir))}
    assert all(expected[q] == task.corpus[next(iter(r))] for q, r in zip(task.queries, task.relevance))
    assert all(expected[row["anchor"]] == row["positive"] for row in train)
    assert f"{len(train)} train pairs, {len(task.queries)} test queries" in printed
    assert not {row["anchor"].split(":")[0] for row in train} & {q.split(":")[0] for q in task.queries}
    counts = write_task(str(out), info_dir=str(info_dir), test_percent=50, max_train=1, max_test=1,
                        overwrite=True)
    assert (counts["train_pairs"], counts["test_queries"]) == (1, 1)


def test_no_manuals_is_one_line_error_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no readable GNU info manuals"):
        write_task(str(tmp_path / "out"), info_dir=str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match=r"^error: .*missing: no readable GNU info manuals"):
        info_retrieval.main([str(tmp_path / "out"), "--info-dir", str(tmp_path / "missing")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.skipif(not glob.glob("/usr/share/info/*.info*.gz"), reason="no GNU info manuals installed")
def test_installed_manuals_give_a_usable_task():
    train, test, train_manuals, test_manuals = split_by_manual(info_pairs(), 20)
    assert len(test) >= 100 and len(train) >= 500 and train_manuals and test_manuals
