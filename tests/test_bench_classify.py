"""scripts/bench_classify.py end to end on CPU: the users' transformers Trainer and our classification
run fine-tune one tiny random ModernBERT on a small two-class task, the one evaluator scores both
exports through AutoModelForSequenceClassification, and on our side it gives what the run's own
evaluation gave; a bad argument stops it with one line before anything is written."""

import csv
import json
import math
import os
import random
import subprocess
import sys

import pytest
from sklearn import metrics as sk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POS = "good great fine happy bright warm kind".split()
NEG = "bad awful sad dark cold cruel grim".split()


def labelled(rng, n: int) -> list[tuple[str, str]]:
    """Sentences of 3 to 8 positive or negative words, alternating."""
    return [(" ".join(rng.choice(POS if i % 2 else NEG) for _ in range(rng.randint(3, 8))), "pos" if i % 2 else "neg")
            for i in range(n)]


def bench(*args, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_classify.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, check=False)


def test_both_sides_train_and_the_evaluator_agrees_with_our_run(tmp_path, tiny_tokenizer_dir, tiny_hf_dir):
    pytest.importorskip("accelerate")  # transformers' Trainer needs it
    rows = labelled(random.Random(0), 160)
    task = tmp_path / "task"
    task.mkdir()
    with open(task / "train.csv", "w", newline="") as f:  # the two formats users have
        csv.writer(f).writerows([("text", "label"), *rows[:128]])
    with open(task / "dev.jsonl", "w") as f:
        f.writelines(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows[128:])
    init = tiny_hf_dir(str(tmp_path), tiny_tokenizer_dir(str(tmp_path), texts=[text for text, _ in rows]))
    work = tmp_path / "work"
    done = bench("--init", init, "--task", task, "--work-dir", work, "--sides", "hf,ours", "--batch-size", 16,
                 "--epochs", 2, "--seq-len", 32, "--lr", 3e-3)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    results = json.loads((work / "results.json").read_text())
    runs = {row["side"]: row["runs"][0] for row in results["rows"]}
    assert list(runs) == ["hf", "ours"] and results["task"]["labels"] == ["neg", "pos"]
    for side, run in runs.items():
        assert run["steps"] == 16, side
        for key in ("accuracy", "macro_f1", "whole_s", "training_after_first_step_s", "examples_per_s"):
            assert math.isfinite(run[key]) and run[key] > 0, (side, key, run[key])
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| transformers Trainer, fp32", "| ours (configs/classify.py)"]
    assert "batch 16, 2 epoch(s), lr 0.003" in done.stdout and "weight decay: hf 0, ours 0.01" in done.stdout

    from transformers import AutoModelForSequenceClassification

    for run in runs.values():  # each export is what users load
        model = AutoModelForSequenceClassification.from_pretrained(run["model"])
        assert type(model).__name__ == "ModernBertForSequenceClassification"
        assert model.config.id2label == {0: "neg", 1: "pos"}

    # the one evaluator, reading our export, gives what our run computed on its own parameters
    saved = [json.loads(line) for line in open(work / "ours-seed0" / "eval_predictions.jsonl")]
    gold, predicted = [r["label"] for r in saved], [r["prediction"] for r in saved]
    assert len(saved) == 32 and len(set(predicted)) == 2, predicted  # not a constant answer, where any agree
    assert runs["ours"]["accuracy"] == pytest.approx(sk.accuracy_score(gold, predicted), abs=1e-9)
    assert runs["ours"]["macro_f1"] == pytest.approx(sk.f1_score(gold, predicted, average="macro"), abs=1e-9)
    assert runs["ours"]["own_eval"]["accuracy"] == pytest.approx(runs["ours"]["accuracy"], abs=1e-9)


@pytest.mark.parametrize("args,message", [
    ([], "error: --init: required"),
    (["--init", "nowhere"], "error: --init nowhere: no config.json"),
    (["--init", "{init}", "--task", "{task}"], "error: --task {task}: no dev"),
    (["--init", "{init}", "--sides", "hf,theirs"], "error: --sides: unknown ['theirs']"),
])
def test_bad_arguments_stop_with_one_line_and_write_nothing(tmp_path, args, message):
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text("{}")
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "train.csv").write_text("text,label\na,b\n")
    fill = {"init": tmp_path / "init", "task": tmp_path / "task"}
    before = sorted(os.listdir(tmp_path))
    done = bench(*[a.format(**fill) for a in args], "--work-dir", tmp_path / "work", "--name", "never", cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.startswith(message.format(**fill)) and len(done.stderr.splitlines()) == 1, done.stderr
    assert sorted(os.listdir(tmp_path)) == before
    assert not os.path.exists(os.path.join(REPO, "docs", "results", "classify_never.json"))
