"""The data scripts: preprocessing is all-or-nothing, errors exit with one line, the benchmark runs."""

import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"
WORDS = "shards hold token ids written once and memory mapped by every process that trains".split()


def script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    lines = [json.dumps({"body": " ".join(rng.choice(WORDS, rng.integers(3, 30)))}) for _ in range(200)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_preprocess_writes_a_complete_folder_once(corpus, tmp_path, capsys):
    preprocess = script("preprocess")
    out = tmp_path / "shards"
    args = ["--output", str(out), "--train-files", corpus, "--text-field", "body", "--vocab-size", "300"]
    preprocess(args)
    assert "200 documents" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == 200 and meta["read_stats"]["documents"] == 200
    assert sorted(os.listdir(out)) == ["lengths-00000.npy", "meta.json", "tokenizer", "tokens-00000.bin"]
    assert os.path.getsize(out / "tokens-00000.bin") == 2 * meta["tokens"]  # uint16 ids
    with pytest.raises(SystemExit, match=r"^error: .*shards already exists; pass overwrite to replace it$"):
        preprocess(args)
    preprocess(args + ["--overwrite", "--tokenizer", str(out / "tokenizer")])
    assert sorted(os.listdir(tmp_path)) == ["shards"]  # no temp or old folder left behind


def test_failed_preprocessing_leaves_nothing(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "fine"}\n{"body": "broken\n')
    out = tmp_path / "shards"
    with pytest.raises(SystemExit, match=r"^error: .*bad\.jsonl:2: not valid JSON"):
        script("preprocess")(["--output", str(out), "--train-files", f"{corpus},{bad}", "--text-field", "body",
                              "--tokenizer", str(_tokenizer_dir(corpus, tmp_path))])
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "run"]


def _tokenizer_dir(corpus, tmp_path):
    script("train_tokenizer")(["--output-dir", str(tmp_path / "run"), "--train-files", corpus,
                               "--text-field", "body", "--vocab-size", "300"])
    return tmp_path / "run" / "tokenizer"


def test_train_tokenizer_and_its_errors(corpus, tmp_path, capsys):
    assert (_tokenizer_dir(corpus, tmp_path) / "tokenizer.json").exists()
    assert "run/tokenizer (" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"^error: train_files: .*missing\.txt: no such file or directory"):
        script("train_tokenizer")(["--output-dir", str(tmp_path / "other"), "--train-files", "missing.txt"])


def test_benchmark_prints_both_sources(tmp_path, capsys):
    corpus = tmp_path / "train.txt"
    rng = np.random.default_rng(1)
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS, rng.integers(3, 30))) for _ in range(300)) + "\n")
    script("bench_data")(["--train-files", str(corpus), "--seq-len", "64", "--batch-size", "4", "--seconds", "0",
                          "--work-dir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert "raw text" in out and "shards" in out and "preprocessing once" in out
