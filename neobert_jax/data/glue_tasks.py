"""The tasks scripts/glue.py runs: GLUE folders in the layout of GLUE's own distribution, and custom
folders described by a task.json; each is turned into the JSONL files and config keys of a
classification run (configs/classify.py), and scored by its official metric.

GLUE's TSVs are not CSV: quotes are literal text, so they are read with no quoting; CoLA has no
header (label in column 2, sentence in column 4); QQP's train file has rows with missing fields,
which are skipped and counted, as GLUE's reference loaders do. Labels are given in GLUE's order so
that every run of a task names its outputs alike.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys

import numpy as np

from neobert_jax.data.errors import DataError

TASK_FILE = "task.json"
SINGLE = "single_label_classification"
TOKEN = "token_classification"
# name -> (dev file, header?, (text, pair, label) columns, problem type, labels, metrics)
GLUE = {
    "CoLA": ("dev.tsv", False, (3, None, 1), SINGLE, "0,1", ["mcc"]),
    "SST-2": ("dev.tsv", True, ("sentence", None, "label"), SINGLE, "0,1", ["accuracy"]),
    "MRPC": ("dev.tsv", True, ("#1 String", "#2 String", "Quality"), SINGLE, "0,1", ["f1", "accuracy"]),
    "STS-B": ("dev.tsv", True, ("sentence1", "sentence2", "score"), "regression", "", ["pearson", "spearman"]),
    "QQP": ("dev.tsv", True, ("question1", "question2", "is_duplicate"), SINGLE, "0,1", ["f1", "accuracy"]),
    "MNLI": ("dev_matched.tsv", True, ("sentence1", "sentence2", "gold_label"), SINGLE,
             "entailment,neutral,contradiction", ["accuracy"]),
    "QNLI": ("dev.tsv", True, ("question", "sentence", "label"), SINGLE, "entailment,not_entailment", ["accuracy"]),
    "RTE": ("dev.tsv", True, ("sentence1", "sentence2", "label"), SINGLE, "entailment,not_entailment", ["accuracy"]),
    "WNLI": ("dev.tsv", True, ("sentence1", "sentence2", "label"), SINGLE, "0,1", ["accuracy"]),
}


@dataclasses.dataclass
class Task:
    name: str
    folder: str
    problem_type: str
    metrics: list[str]  # official ones first
    config: dict  # classify config keys (data.*) this task sets
    positive_label: str = "1"  # the class whose F1 "f1" is
    glue: bool = False

    @classmethod
    def of_folder(cls, folder: str) -> "Task | None":
        """The task in `folder`: a GLUE name, else its task.json; None if neither."""
        name = os.path.basename(os.path.normpath(folder))
        if name in GLUE:
            _, _, _, problem, labels, metrics = GLUE[name]
            keys = {"data.text_column": "text", "data.label_column": "label", "data.labels": labels,
                    "data.text_pair_column": "text_pair" if GLUE[name][2][1] is not None else ""}
            return cls(name, folder, problem, metrics, keys, glue=True)
        spec_path = os.path.join(folder, TASK_FILE)
        if not os.path.isfile(spec_path):
            return None
        try:
            with open(spec_path) as f:
                spec = json.load(f)
            return cls(name, folder, spec.get("problem_type", SINGLE), list(spec.get("metrics") or []),
                       dict(spec.get("config") or {}), str(spec.get("positive_label", "1")))
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            raise DataError(f"{spec_path}: not a task description ({e})") from None

    def source_files(self) -> tuple[str, str]:
        if self.glue:
            return os.path.join(self.folder, "train.tsv"), os.path.join(self.folder, GLUE[self.name][0])
        with open(os.path.join(self.folder, TASK_FILE)) as f:
            spec = json.load(f)
        return tuple(os.path.join(self.folder, spec.get(key, f"{key}.jsonl")) for key in ("train", "dev"))


def _glue_rows(task: str, path: str) -> tuple[list[dict], int]:
    """-> (rows as {text, [text_pair], label}, rows skipped for missing fields)."""
    _, header, columns, problem, _, _ = GLUE[task]
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (GLUE's {task} folder holds train.tsv and {GLUE[task][0]})")
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if header:
        if not lines:
            raise DataError(f"{path}: empty")
        names = lines[0]
        missing = [c for c in columns if c is not None and c not in names]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)}); "
                            f"is this GLUE's {task}?")
        columns = tuple(None if c is None else names.index(c) for c in columns)
        lines = lines[1:]
    rows, skipped = [], 0
    for line in lines:
        if len(line) <= max(c for c in columns if c is not None) or not line[columns[2]].strip():
            skipped += 1
            continue
        row = {"text": line[columns[0]], "label": line[columns[2]].strip()}
        if columns[1] is not None:
            row["text_pair"] = line[columns[1]]
        if problem == "regression":
            try:
                row["label"] = float(row["label"])
            except ValueError:
                raise DataError(f"{path}: column {columns[2]} holds {row['label']!r}, expected a score") from None
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no usable rows")
    return rows, skipped


def _table_rows(path: str) -> list[dict]:
    from neobert_jax.classify.data import read_table

    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    table = read_table(path)
    columns = {name: table.column(name) for name in table.names}
    return [{name: values[i] for name, values in columns.items()} for i in range(len(table))]


def subsample(rows: list, limit: int, seed: int = 0) -> list:
    """`limit` rows (0 = all) drawn with `seed`, in their file order."""
    if not limit or len(rows) <= limit:
        return rows
    return [rows[i] for i in sorted(np.random.default_rng(seed).choice(len(rows), limit, replace=False))]


def prepare(task: Task, data_dir: str, max_train: int, max_eval: int) -> dict:
    """Writes data_dir/{train,dev}.jsonl (subsampled) -> {the data.* config keys, counts}."""
    os.makedirs(data_dir, exist_ok=True)
    out, skipped = {}, 0
    for side, source, limit in zip(("train", "dev"), task.source_files(), (max_train, max_eval)):
        if task.glue:
            rows, dropped = _glue_rows(task.name, source)
            skipped += dropped
        else:
            rows = _table_rows(source)
        rows = subsample(rows, limit)
        path = os.path.join(data_dir, f"{side}.jsonl")
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        os.replace(path + ".tmp", path)
        out[side] = (path, len(rows))
    keys = {**task.config, "classifier.problem_type": task.problem_type,
            "data.train_files": out["train"][0], "data.eval_files": out["dev"][0]}
    return {"keys": keys, "train_examples": out["train"][1], "eval_examples": out["dev"][1], "skipped_rows": skipped}


def official_metrics(task: Task, predictions_file: str, after: dict) -> dict[str, float]:
    """The task's metrics from the run's eval predictions (labels as named in the data); a metric
    not computed here is taken from the run's own evaluation (`after`)."""
    from scipy import stats
    from sklearn import metrics as sk

    gold = predicted = []
    if task.problem_type != TOKEN:  # tagging's metrics are the run's own (seqeval), in `after`
        with open(predictions_file) as f:
            saved = [json.loads(line) for line in f]
        gold, predicted = [r["label"] for r in saved], [r["prediction"] for r in saved]
    wanted = task.metrics or (["pearson", "spearman"] if task.problem_type == "regression"
                              else ["accuracy", "macro_f1"] if task.problem_type == SINGLE else sorted(after))
    out = {}
    for name in wanted:
        if task.problem_type == SINGLE and name in ("accuracy", "f1", "mcc", "macro_f1"):
            if name == "f1":
                value = sk.f1_score([g == task.positive_label for g in gold],
                                    [p == task.positive_label for p in predicted], zero_division=0)
            else:
                value = {"accuracy": sk.accuracy_score, "mcc": sk.matthews_corrcoef,
                         "macro_f1": lambda a, b: sk.f1_score(a, b, average="macro", zero_division=0)}[name](gold,
                                                                                                             predicted)
        elif task.problem_type == "regression" and name in ("pearson", "spearman"):
            value = (stats.pearsonr if name == "pearson" else stats.spearmanr)(predicted, gold)[0]
        elif name in after:
            value = after[name]
        else:
            raise ValueError(f"metric {name!r} is not known for {task.problem_type}")
        out[name] = float(value)
    return out
