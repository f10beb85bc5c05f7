"""Sequence classification (scripts/finetune.py): a CLI run on a separable two-class task improves
its eval accuracy and reports metrics equal to scikit-learn's on its saved predictions; its HF export
loads in transformers' AutoModelForSequenceClassification with the run's logits; multi-label and
regression runs train and report their metrics; the head of a classification dir is kept by
init_from, an MLM dir's classifier starts fresh."""

import csv
import json
import os
import random
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from sklearn import metrics as sk

from conftest import packed_and_one_a_row, set_keys
from neobert_jax.classify.head import SequenceClassifier, load_classifier, read_classifier_labels, save_classifier_dir
from neobert_jax.classify.task import train_classifier
from neobert_jax.config import ModernBertConfig
from neobert_jax.runtime import config as runtime_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POS = "good great fine happy bright warm kind".split()
NEG = "bad awful sad dark cold cruel grim".split()
RUN = {"train.seq_len": 16, "train.batch_size": 16, "train.max_steps": 30, "train.learning_rate": 3e-3,
       "train.log_every": 5, "train.save_every": 30, "compilation_cache_dir": ""}


def sentence(rng, n_pos: int, n_neg: int) -> str:
    words = [rng.choice(POS) for _ in range(n_pos)] + [rng.choice(NEG) for _ in range(n_neg)]
    rng.shuffle(words)
    return " ".join(words)


def write_rows(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t" if str(path).endswith(".tsv") else ",")
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_tokenizer_dir, tiny_hf_dir):
    """A random-init tiny MLM dir and three small tasks on sentences of positive and negative words:
    which kind they are (CSV), which kinds they hold (JSONL lists) and their positive share (TSV)."""
    root = tmp_path_factory.mktemp("classify")
    rng = random.Random(0)
    single = [(sentence(rng, rng.randint(3, 8), 0), "pos") if i % 2 else (sentence(rng, 0, rng.randint(3, 8)), "neg")
              for i in range(200)]
    write_rows(root / "train.csv", single[:160])
    write_rows(root / "dev.csv", single[160:])
    with open(root / "multi.jsonl", "w") as f:
        for i in range(160):
            n_pos, n_neg = [(4, 0), (0, 4), (2, 3)][i % 3]
            kinds = [k for k, n in (("pos", n_pos), ("neg", n_neg)) if n]
            f.write(json.dumps({"text": sentence(rng, n_pos, n_neg), "label": kinds}) + "\n")
    scores = []
    for _ in range(160):
        n_pos = rng.randint(0, 6)
        scores.append((sentence(rng, n_pos, 6 - n_pos), n_pos / 6))
    write_rows(root / "scores.tsv", scores, header=("text", "score"))
    tokenizer = tiny_tokenizer_dir(str(root), texts=[t for t, _ in single + scores])
    return root, tiny_hf_dir(str(root), tokenizer)


def config_for(output_dir, init_from, **values):
    cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "classify.py"))
    cfg.output_dir, cfg.init_from = str(output_dir), str(init_from)
    return set_keys(cfg, {**RUN, **values})


def test_cli_run_improves_accuracy_and_its_export_gives_the_same_logits(task, tmp_path):
    root, hf_dir = task
    out = tmp_path / "run"
    command = [sys.executable, os.path.join(REPO, "scripts", "finetune.py"), "--config",
               os.path.join(REPO, "configs", "classify.py"), f"--config.init_from={hf_dir}",
               f"--config.data.train_files={root / 'train.csv'}", f"--config.data.eval_files={root / 'dev.csv'}",
               f"--config.output_dir={out}", *[f"--config.{k}={v}" for k, v in RUN.items()]]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "classifier.bias, classifier.weight start fresh" in result.stderr
    assert "0 cut to train.seq_len=16 tokens" in result.stderr
    evals = [r for r in map(json.loads, open(out / "metrics.jsonl")) if "eval_accuracy" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert evals[-1]["eval_accuracy"] >= 0.95 > evals[0]["eval_accuracy"] + 0.2

    saved = [json.loads(line) for line in open(out / "eval_predictions.jsonl")]
    gold, predicted = [r["label"] for r in saved], [r["prediction"] for r in saved]
    assert evals[-1]["eval_accuracy"] == pytest.approx(sk.accuracy_score(gold, predicted))
    assert evals[-1]["eval_macro_f1"] == pytest.approx(sk.f1_score(gold, predicted, average="macro"))
    assert evals[-1]["eval_mcc"] == pytest.approx(sk.matthews_corrcoef(gold, predicted))

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out / "hf").eval()
    assert type(model).__name__ == "ModernBertForSequenceClassification"
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.problem_type == "single_label_classification"
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    with open(root / "dev.csv") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    assert np.abs(logits - np.asarray([r["logits"] for r in saved])).max() <= 1e-4


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_export_parity_and_init_from_keeps_the_head(pooling, tmp_path, hf_config):
    """Random head weights (not zero biases) so every parameter's mapping shows in the logits."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = ModernBertConfig(**{k: v for k, v in hf_config().to_dict().items() if k in
                                 ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads", "local_attention", "pad_token_id", "cls_token_id",
                                  "sep_token_id", "bos_token_id", "eos_token_id")})
    model = SequenceClassifier(config, 3, pooling=pooling, dropout=0.1, rngs=nnx.Rngs(1))
    bias = model.classifier.bias
    bias.set_value(jax.random.normal(jax.random.PRNGKey(2), bias.get_value().shape))
    save_classifier_dir(model, str(tmp_path / "hf"), labels=["a", "b", "c"], problem_type="single_label_classification",
                        tokenizer_dir=None)
    ids = np.random.default_rng(0).integers(5, 300, (3, 40)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 25:], mask[2, 9:] = 0, 0
    ids[mask == 0] = config.pad_token_id
    ours = np.asarray(model(ids, mask))
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.classifier_pooling == pooling and hf.config.num_labels == 3
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-4

    assert read_classifier_labels(str(tmp_path / "hf"))["labels"] == ["a", "b", "c"]
    loaded, fresh = load_classifier(str(tmp_path / "hf"), 3, pooling=pooling, dropout=0.0, seed=5, runtime={},
                                    config_changes={})
    assert fresh == []
    assert np.array_equal(np.asarray(loaded(ids, mask)), ours)


@pytest.mark.parametrize("problem", ["multi_label", "regression"])
def test_multi_label_and_regression_runs_train_and_report_their_metrics(problem, task, tmp_path):
    root, hf_dir = task
    if problem == "multi_label":
        values = {"classifier.problem_type": "multi_label_classification", "classifier.pooling": "mean",
                  "data.train_files": str(root / "multi.jsonl"), "data.eval_files": str(root / "multi.jsonl")}
    else:
        values = {"classifier.problem_type": "regression", "data.train_files": str(root / "scores.tsv"),
                  "data.eval_files": str(root / "scores.tsv"), "data.label_column": "score"}
    result = train_classifier(config_for(tmp_path / "run", hf_dir, **values))
    records = [r for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if "loss" in r]
    assert records[-1]["loss"] < 0.5 * records[0]["loss"], records
    assert result.after["loss"] < result.before["loss"]
    saved = [json.loads(line) for line in open(tmp_path / "run" / "eval_predictions.jsonl")]
    if problem == "multi_label":
        binarize = lambda rows: np.asarray([[name in row for name in ("neg", "pos")] for row in rows])
        gold, predicted = binarize(r["label"] for r in saved), binarize(r["prediction"] for r in saved)
        assert result.after["micro_f1"] == pytest.approx(sk.f1_score(gold, predicted, average="micro"))
        assert result.after["macro_f1"] == pytest.approx(sk.f1_score(gold, predicted, average="macro"))
        assert result.after["micro_f1"] > 0.9
    else:
        gold, predicted = [r["label"] for r in saved], [r["prediction"] for r in saved]
        assert result.after["pearson"] == pytest.approx(stats.pearsonr(gold, predicted)[0])
        assert result.after["spearman"] == pytest.approx(stats.spearmanr(gold, predicted)[0])
        assert result.after["spearman"] > 0.5
        assert json.load(open(tmp_path / "run" / "hf" / "config.json"))["id2label"] == {"0": "score"}


def test_a_classification_dir_continues_with_its_head_and_label_order(task, tmp_path, capsys):
    """The CLI test's kind of run, then a second from its export: the head is kept, so the second
    run's step-0 evaluation is already the first run's last one."""
    root, hf_dir = task
    files = {"data.train_files": str(root / "train.csv"), "data.eval_files": str(root / "dev.csv")}
    first = train_classifier(config_for(tmp_path / "first", hf_dir, **files, **{"data.labels": "pos,neg"}))
    second = train_classifier(config_for(tmp_path / "second", first.hf_dir, **files, **{"train.max_steps": 1}))
    assert "classifier: head and classifier from init_from" in capsys.readouterr().err
    assert second.before["accuracy"] == first.after["accuracy"] >= 0.95
    assert second.before["loss"] == pytest.approx(first.after["loss"], rel=1e-5)
    assert json.load(open(tmp_path / "second" / "hf" / "config.json"))["id2label"] == {"0": "pos", "1": "neg"}


def test_labels_are_read_sorted_and_long_texts_are_cut_as_the_tokenizer_cuts_them(task, tmp_path):
    from transformers import AutoTokenizer

    from neobert_jax.classify.data import PairTokenizer, label_names, read_examples, targets
    from neobert_jax.data import load_tokenizer

    root, hf_dir = task
    write_rows(tmp_path / "multi.csv", [("one", "10;2"), ("two", ""), ("three", "2")])
    cfg = config_for(tmp_path, hf_dir, **{"data.text_pair_column": ""}).data
    examples = read_examples([str(tmp_path / "multi.csv")], cfg, "multi_label_classification")
    names = label_names(examples, "multi_label_classification", [])
    assert names == ["2", "10"]
    assert targets(examples, "multi_label_classification", names, "label").tolist() == [[1, 1], [0, 0], [1, 0]]

    texts = ["good " * 30, "bad", "fine " * 3]
    pairs = ["cold " * 3, "warm " * 40, "kind"]
    ids, cut = PairTokenizer(load_tokenizer(hf_dir), 12).encode(texts, pairs)
    reference = AutoTokenizer.from_pretrained(hf_dir)(texts, pairs, truncation=True, max_length=12)["input_ids"]
    assert cut == 2 and [row.tolist() for row in ids] == reference


def test_a_resume_whose_labels_changed_is_refused(task, tmp_path):
    """The checkpoints' outputs are named by the labels' order; data with another label set would
    rename them silently on resume."""
    root, hf_dir = task
    cfg = config_for(tmp_path / "run", hf_dir, **{"data.train_files": str(root / "train.csv"),
                                                   "train.max_steps": 2, "train.save_every": 1})
    stopped = train_classifier(cfg)
    assert stopped.completed
    rows = [("some new words here", "aaa")] + [tuple(r) for r in csv.reader(open(root / "train.csv"))][1:]
    cfg.data.train_files = write_rows(tmp_path / "more.csv", rows)
    cfg.train.max_steps = 4
    with pytest.raises(ValueError, match=r"the labels are \['aaa', 'neg', 'pos'\] but the checkpoints .* were "
                                         r"trained with \['neg', 'pos'\]"):
        train_classifier(cfg)
    cfg.data.labels = "neg,pos,aaa"  # the names in the checkpoints' order, plus one: still another head
    with pytest.raises(ValueError, match="were trained with"):
        train_classifier(cfg)


def test_a_classification_run_dir_continues_like_its_export(task, tmp_path):
    """init_from a classification run dir (its latest checkpoint) keeps the head and classifier as
    its HF export does."""
    root, hf_dir = task
    files = {"data.train_files": str(root / "train.csv"), "data.eval_files": str(root / "dev.csv")}
    first = train_classifier(config_for(tmp_path / "first", hf_dir, **files, **{"train.max_steps": 6}))
    from_run = train_classifier(config_for(tmp_path / "second", tmp_path / "first", **files, **{"train.max_steps": 1}))
    assert from_run.before["loss"] == pytest.approx(first.after["loss"], rel=1e-5)


def test_rows_are_padded_to_the_longest_example_not_to_seq_len(task, tmp_path):
    """Short texts under a long train.seq_len: rows of the longest example rounded up to 64, and the
    saved eval logits still those of the export under transformers' own (dynamic) padding."""
    from neobert_jax.classify.data import row_length

    assert [row_length([np.zeros(n)] * 2, seq_len) for n, seq_len in ((70, 512), (64, 512), (5, 16), (65, 100))] \
        == [128, 64, 16, 100]
    root, hf_dir = task
    out = tmp_path / "run"
    files = {"data.train_files": str(root / "train.csv"), "data.eval_files": str(root / "dev.csv")}
    assert train_classifier(config_for(out, hf_dir, **files, **{"train.seq_len": 256, "train.max_steps": 3})).completed
    assert json.load(open(out / "run_config.json"))["resolved"]["row_length"] == 64

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    saved = [json.loads(line) for line in open(out / "eval_predictions.jsonl")]
    with open(root / "dev.csv") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    assert encoded["input_ids"].shape[1] < 64
    with torch.no_grad():
        logits = model(**encoded).logits.numpy()
    assert np.abs(logits - np.asarray([r["logits"] for r in saved])).max() <= 1e-4


@pytest.mark.parametrize("problem", ["single_label_classification", "multi_label_classification", "regression"])
def test_packed_rows_train_as_one_example_a_row(problem, task, tmp_path):
    """Several examples a row (segments, pooled per slot) give the losses of one example a row."""
    root, hf_dir = task
    files = {"single_label_classification": ("train.csv", "label"), "multi_label_classification": ("multi.jsonl", "label"),
             "regression": ("scores.tsv", "score")}[problem]
    values = {"classifier.problem_type": problem, "classifier.pooling": "mean" if problem == "regression" else "cls",
              "data.train_files": str(root / files[0]), "data.label_column": files[1], "train.seq_len": 64,
              "train.max_steps": 3, "train.log_every": 1}
    losses, rows = packed_and_one_a_row(lambda out, pack: config_for(out, hf_dir, **values, **{"data.pack": pack}),
                                        tmp_path)
    assert rows[False] == 16 and rows[True] < 8, rows
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert len(losses[True]) == 3
