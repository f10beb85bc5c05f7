"""scripts/glue.py: a folder in GLUE's layout (headerless CoLA, SST-2, STS-B and a broken RTE) runs
end to end from relative paths with each task's official metric, the broken task is a failed row
while the others finish, and a rerun reports the finished runs without training; the built-in
stdlib tasks share no package across train and dev and run through the same path."""

import json
import os
import random

import pytest

from neobert_jax.data import builtin_glue
from neobert_jax.glue import main

POS = "good great fine happy bright warm kind".split()
NEG = "bad awful sad dark cold cruel grim".split()
RUN = ["--set", "train.seq_len=24", "--set", "train.batch_size=8", "--config.train.max_steps=6",
       "--set", "train.learning_rate=3e-3", "--set", "train.save_every=6", "--set", "compilation_cache_dir="]


def sentence(rng, n_pos, n_neg):
    words = [rng.choice(POS) for _ in range(n_pos)] + [rng.choice(NEG) for _ in range(n_neg)]
    rng.shuffle(words)
    return " ".join(words)


def write_tsv(path, rows, header=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines("\t".join(map(str, row)) + "\n" for row in ([header] if header else []) + rows)


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_hf_dir):
    root = tmp_path_factory.mktemp("glue")
    rng = random.Random(0)
    texts = []
    for split, n in (("train", 48), ("dev", 16)):
        good = [int(i % 2) for i in range(n)]
        cola = [("src", label, "", sentence(rng, 4, 0) if label else sentence(rng, 0, 4)) for label in good]
        write_tsv(root / "CoLA" / f"{split}.tsv", cola)  # no header; a quote is text, not quoting
        sst = [(sentence(rng, 3, 0) + ' "quoted' if label else sentence(rng, 0, 3), label) for label in good]
        write_tsv(root / "SST-2" / f"{split}.tsv", sst, header=("sentence", "label"))
        sts = []
        for i in range(n):
            k = rng.randint(0, 4)
            sts.append(("main", "2012", "x", f"{i:04d}", "", "", "", sentence(rng, k, 4 - k), sentence(rng, k, 4 - k),
                        f"{k * 1.25:.2f}"))
        write_tsv(root / "STS-B" / f"{split}.tsv", sts, header=("genre", "filename", "year", "id", "x1", "x2", "x3",
                                                               "sentence1", "sentence2", "score"))
        write_tsv(root / "RTE" / f"{split}.tsv", [(0, "a", "b", "entailment")], header=("index", "s1", "s2", "label"))
        texts += [row[3] for row in cola] + [row[0] for row in sst]
    os.makedirs(root / "notes")  # not a task: ignored
    tokenizer = tiny_tokenizer_dir(str(root), texts=texts)
    return root, tiny_hf_dir(str(root), tokenizer)


def test_glue_layout_runs_with_official_metrics_and_a_broken_task_is_reported(glue_dir, tmp_path, monkeypatch, capsys):
    root, hf_dir = glue_dir
    monkeypatch.chdir(root)
    args = ["--tasks-dir", ".", "--init-from", os.path.relpath(hf_dir, root), "--output-dir", "out", *RUN]
    assert main(args) == 1
    out = capsys.readouterr()
    results = json.load(open(root / "out" / "glue_results.json"))
    rows = {r["task"]: r for r in results["tasks"]}
    assert sorted(rows) == ["CoLA", "RTE", "SST-2", "STS-B"]
    assert "no column 'sentence1'" in rows["RTE"]["error"] and rows["RTE"]["status"] == "failed"
    assert list(rows["CoLA"]["metrics"]) == ["mcc"] and list(rows["SST-2"]["metrics"]) == ["accuracy"]
    assert list(rows["STS-B"]["metrics"]) == ["pearson", "spearman"]
    for task in ("CoLA", "SST-2", "STS-B"):
        assert rows[task]["status"] == "ok" and rows[task]["steps"] == 6 and rows[task]["train_examples"] == 48
        assert rows[task]["eval_examples"] == 16 and rows[task]["seconds"] > 0
    sst = [json.loads(line) for line in open(root / "out" / "SST-2" / "data" / "train.jsonl")]
    assert sst[1]["text"].endswith(' "quoted') and sst[1]["label"] == "1"  # a quote is text, not quoting
    assert "mcc" in out.out and "pearson" in out.out and "no column 'sentence1'" in out.out
    assert "ignored: " in out.err and "notes" in out.err
    assert results["counts"] == {"ok": 3, "cached": 0, "failed": 1, "skipped": 0, "stopped": 0}

    assert main(args) == 1  # finished runs are reported, not retrained
    again = {r["task"]: r for r in json.load(open(root / "out" / "glue_results.json"))["tasks"]}
    for task in ("CoLA", "SST-2", "STS-B"):
        assert again[task]["status"] == "cached" and again[task]["metrics"] == rows[task]["metrics"]
    assert "evaluation at step" not in capsys.readouterr().err

    assert main([*args, "--tasks", "CoLA", "--set", "train.learning_rate=1e-3"]) == 1
    changed = json.load(open(root / "out" / "glue_results.json"))["tasks"][0]
    assert changed["status"] == "failed" and "other settings (overrides)" in changed["error"]
    assert main([*args, "--set", "train.no_such_key=1"]) == 2
    assert "unknown config key config.train.no_such_key" in capsys.readouterr().err


def test_builtin_tasks_share_no_package_and_run(glue_dir, tmp_path, capsys):
    counts = builtin_glue.write_builtin_tasks(str(tmp_path / "builtin"))
    assert set(counts) == {"stdlib-family", "stdlib-pair", "py-identifiers"}
    for task, sides in counts.items():
        assert sides["train"] > 200 and sides["dev"] > 100, (task, sides)
        packages = {}
        for side in ("train", "dev"):
            rows = [json.loads(line) for line in open(tmp_path / "builtin" / task / f"{side}.jsonl")]
            assert len(rows) == sides[side]
            packages[side] = {m.split(".")[0] for r in rows for m in r["module"].split("|")}
        assert not packages["train"] & packages["dev"], task
        assert json.load(open(tmp_path / "builtin" / task / "task.json"))["train"] == "train.jsonl"
    family = [json.loads(line) for line in open(tmp_path / "builtin" / "stdlib-family" / "dev.jsonl")]
    assert {r["label"] for r in family} == set(builtin_glue.FAMILIES)
    assert builtin_glue.write_builtin_tasks(str(tmp_path / "again")) == counts  # sorted and seeded
    assert open(tmp_path / "again" / "stdlib-pair" / "dev.jsonl").read() == \
        open(tmp_path / "builtin" / "stdlib-pair" / "dev.jsonl").read()
    tagged = json.loads(open(tmp_path / "builtin" / "py-identifiers" / "train.jsonl").readline())
    assert len(tagged["tokens"]) == len(tagged["tags"]) and set(tagged["tags"]) <= {"O", "B-MOD", "B-CLASS", "B-FUNC"}

    _, hf_dir = glue_dir
    code = main(["--tasks-dir", str(tmp_path / "builtin"), "--init-from", hf_dir, "--output-dir",
                 str(tmp_path / "out"), "--max-train", "64", "--max-eval", "32", *RUN])
    rows = {r["task"]: r for r in json.load(open(tmp_path / "out" / "glue_results.json"))["tasks"]}
    assert list(rows["stdlib-family"]["metrics"]) == ["accuracy", "macro_f1"]
    assert list(rows["stdlib-pair"]["metrics"]) == ["f1", "accuracy"]
    assert rows["stdlib-pair"]["train_examples"] == 64 and rows["stdlib-pair"]["eval_examples"] == 32
    assert code == 0 and rows["py-identifiers"]["status"] == "ok", rows["py-identifiers"]
    assert list(rows["py-identifiers"]["metrics"]) == ["f1"]  # seqeval's entity F1, from the run's evaluation
    assert "0 skipped" in capsys.readouterr().out
