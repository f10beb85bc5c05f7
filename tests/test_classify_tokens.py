"""Token classification (scripts/finetune.py --config configs/tag.py): a CLI run on a tagging task
that word identity decides reaches entity F1 >= 0.9, reports seqeval's metrics of its saved
predictions, counts the words train.seq_len cuts (predicted "O"), and exports a dir that
transformers' AutoModelForTokenClassification loads to the same predictions; a second run from
that export continues its classifier, and a resume with other labels is refused. Alignment is
run_ner.py's (checked against transformers' own tokenizer and word_ids()); export parity, metrics
and bad input are checked without training."""

import json
import os
import random
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import packed_and_one_a_row, set_keys
from neobert_jax.classify.tag_data import (IGNORE, Sentences, TaggedTokens, WordTokenizer, check_tags,
                                           encode_sentences, read_sentences, tag_names)
from neobert_jax.classify.tag_eval import tag_metrics
from neobert_jax.classify.task import train_classifier
from neobert_jax.config import ModernBertConfig
from neobert_jax.data.errors import DataError
from neobert_jax.runtime import config as runtime_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST = "alice bob carol dave erin frank grace heidi".split()
LAST = "smith jones brown miller davis wilson".split()
CITY = "paris rome berlin madrid vienna lisbon".split()
FILL = "the a met saw in near went to with and then later today".split()
TAGS = ["B-LOC", "B-PER", "I-PER", "O"]  # sorted, the order a run without data.labels uses
SEQ_LEN = 16
RUN = {"train.seq_len": SEQ_LEN, "train.batch_size": 16, "train.max_steps": 30, "train.learning_rate": 3e-3,
       "train.log_every": 5, "train.save_every": 30, "compilation_cache_dir": ""}


def sentence(rng):
    words, tags = [], []
    for _ in range(rng.randint(3, 7)):
        r = rng.random()
        if r < 0.25:
            words, tags = words + [rng.choice(FIRST), rng.choice(LAST)], tags + ["B-PER", "I-PER"]
        elif r < 0.45:
            words, tags = words + [rng.choice(CITY)], tags + ["B-LOC"]
        else:
            words, tags = words + [rng.choice(FILL)], tags + ["O"]
    return words, tags


def write_jsonl(path, rows, text="tokens", label="tags"):
    with open(path, "w") as f:
        f.writelines(json.dumps({text: w, label: t}) + "\n" for w, t in rows)
    return str(path)


def write_conll(path, rows):
    with open(path, "w") as f:
        f.write("-DOCSTART- -X- O O\n\n")
        for words, tags in rows:
            f.writelines(f"{w} NN O {t}\n" for w, t in zip(words, tags))
            f.write("\n")
    return str(path)


def hf_word_tokenizer(path):
    """transformers' tokenizer as run_ner.py sets it up for byte-level BPE: add_prefix_space=True, which
    RobertaTokenizerFast applies to its pre-tokenizer (transformers 5's generic class ignores the flag)."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    return tokenizer


def run_ner_alignment(tokenizer, words, tags, max_length):
    """transformers' examples/pytorch/token-classification/run_ner.py, tokenize_and_align_labels
    (label_all_tokens=False)."""
    encoded = tokenizer(words, truncation=True, max_length=max_length, is_split_into_words=True)
    labels = []
    for i, row in enumerate(tags):
        previous, ids = None, []
        for word in encoded.word_ids(batch_index=i):
            ids.append(IGNORE if word is None or word == previous else row[word])
            previous = word
        labels.append(ids)
    return encoded["input_ids"], labels


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_tokenizer_dir, tiny_hf_dir):
    """A random-init tiny MLM dir, JSONL training sentences and a CoNLL dev set."""
    root = tmp_path_factory.mktemp("tag")
    rng = random.Random(0)
    rows = [sentence(rng) for _ in range(240)]
    rows.append(("alice smith went to paris and then bob jones met carol davis in rome today".split(),
                 "B-PER I-PER O O B-LOC O O B-PER I-PER O B-PER I-PER O B-LOC O".split()))  # cut at SEQ_LEN
    write_jsonl(root / "train.jsonl", rows[:200])
    write_conll(root / "dev.conll", rows[200:])
    tokenizer = tiny_tokenizer_dir(str(root), texts=[" ".join(w) for w, _ in rows], vocab_size=600)
    return root, tiny_hf_dir(str(root), tokenizer), rows


def config_for(output_dir, init_from, **values):
    cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "tag.py"))
    cfg.output_dir, cfg.init_from = str(output_dir), str(init_from)
    return set_keys(cfg, {**RUN, **values})


@pytest.fixture(scope="module")
def cli_run(task, tmp_path_factory):
    root, hf_dir, _ = task
    out = tmp_path_factory.mktemp("tag_run") / "run"
    command = [sys.executable, os.path.join(REPO, "scripts", "finetune.py"), "--config",
               os.path.join(REPO, "configs", "tag.py"), f"--config.init_from={hf_dir}",
               f"--config.data.train_files={root / 'train.jsonl'}", f"--config.data.eval_files={root / 'dev.conll'}",
               f"--config.output_dir={out}", *[f"--config.{k}={v}" for k, v in RUN.items()]]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stderr


def test_cli_run_learns_the_tags_and_reports_seqeval_metrics_and_cut_words(task, cli_run):
    from seqeval import metrics as sq

    root, hf_dir, rows = task
    out, stderr = cli_run
    assert "classifier.bias, classifier.weight start fresh (init_from has no token-classification head)" in stderr
    reference = hf_word_tokenizer(hf_dir)
    for name, part in (("data: 200 training sentences, tags " + str(TAGS) + ",", rows[:200]), ("eval: 41 sentences,", rows[200:])):
        words = [w for w, _ in part]
        full = reference(words, is_split_into_words=True)["input_ids"]
        cut = reference(words, is_split_into_words=True, truncation=True, max_length=SEQ_LEN)
        lost = sum(len(w) - len({i for i in cut.word_ids(r) if i is not None}) for r, w in enumerate(words))
        long = sum(len(ids) > SEQ_LEN for ids in full)
        assert long and lost or name.startswith("data"), "the eval set must exercise truncation"
        assert f"{name} {long} cut to {'train.seq_len=' if name.startswith('data') else ''}{SEQ_LEN} tokens " \
               f"({lost} of {sum(map(len, words))} words cut" in stderr, stderr

    evals = [r for r in map(json.loads, open(out / "metrics.jsonl")) if "eval_f1" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert evals[-1]["eval_f1"] >= 0.9 > evals[0]["eval_f1"] + 0.3
    saved = [json.loads(line) for line in open(out / "eval_predictions.jsonl")]
    assert [(r["words"], r["tags"]) for r in saved] == rows[200:]
    gold, predicted = [r["tags"] for r in saved], [r["predicted"] for r in saved]
    for key, fn in (("precision", sq.precision_score), ("recall", sq.recall_score), ("f1", sq.f1_score),
                    ("accuracy", sq.accuracy_score)):
        assert evals[-1][f"eval_{key}"] == pytest.approx(fn(gold, predicted))

    import torch
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(out / "hf").eval()
    assert type(model).__name__ == "ModernBertForTokenClassification"
    assert model.config.id2label == dict(enumerate(TAGS)) and model.config.label2id == {t: i for i, t in enumerate(TAGS)}
    words = [r["words"] for r in saved]
    encoded = hf_word_tokenizer(out / "hf")(words, is_split_into_words=True, truncation=True, max_length=SEQ_LEN,
                                           padding=True, return_tensors="pt")
    with torch.no_grad():
        best = model(**encoded).logits.argmax(-1).numpy()
    for r, row in enumerate(saved):  # each word's first sub-token, "O" for the words the cut dropped
        expected, previous = ["O"] * len(row["words"]), None
        for p, word in enumerate(encoded.word_ids(r)):
            if word is not None and word != previous:
                expected[word] = TAGS[best[r, p]]
            previous = word
        assert row["predicted"] == expected


def test_a_token_classification_dir_continues_and_a_resume_with_other_labels_is_refused(task, cli_run, tmp_path,
                                                                                          capsys):
    root, _, _ = task
    out, _ = cli_run
    first = [r for r in map(json.loads, open(out / "metrics.jsonl")) if "eval_f1" in r][-1]
    files = {"data.train_files": str(root / "train.jsonl"), "data.eval_files": str(root / "dev.conll")}
    second = train_classifier(config_for(tmp_path / "second", out / "hf", **files, **{"train.max_steps": 1}))
    assert "classifier: head and classifier from init_from" in capsys.readouterr().err
    assert second.before["f1"] == first["eval_f1"] and second.before["accuracy"] == first["eval_accuracy"]
    assert second.before["loss"] == pytest.approx(first["eval_loss"], rel=1e-5)
    cfg = config_for(tmp_path / "second", out / "hf", **files,
                     **{"train.max_steps": 2, "data.labels": "O,B-PER,I-PER,B-LOC"})
    with pytest.raises(ValueError, match=r"the labels are \['O', 'B-PER', 'I-PER', 'B-LOC'\] but the checkpoints"):
        train_classifier(cfg)


def test_alignment_is_run_ners_first_sub_token_rule(task):
    """Cut sentences (a word cut mid-way too), words of several sub-tokens, integer-free tags."""
    from neobert_jax.data import load_tokenizer

    _, hf_dir, rows = task
    rows = rows[:40] + [(["Zyxw", "paris", "Qqq-rome", "alice"], ["O", "B-LOC", "B-LOC", "B-PER"])]
    sentences = Sentences([w for w, _ in rows], [t for _, t in rows], ["x"] * len(rows))
    reference = hf_word_tokenizer(hf_dir)
    for max_length in (SEQ_LEN, 9, 64):
        ours = encode_sentences(sentences, WordTokenizer(load_tokenizer(hf_dir), max_length), TAGS)
        ids, labels = run_ner_alignment(reference, sentences.words, [[TAGS.index(t) for t in r] for r in sentences.tags],
                                        max_length)
        assert [row.tolist() for row in ours.ids] == ids
        assert [row.tolist() for row in ours.targets] == labels
    assert max(map(len, ids)) < 64 and ours.truncated == ours.words_cut == 0
    # every word reads as inside running text: after the first word, the ids are the plain text's
    plain = reference(" ".join(rows[0][0]))["input_ids"]
    first_word = len(reference([rows[0][0][0]], is_split_into_words=True)["input_ids"]) - 2
    assert ours.ids[0].tolist()[1 + first_word:] == plain[1 + len(reference(rows[0][0][0])["input_ids"]) - 2:]


def test_metrics_are_seqevals_with_cut_words_predicted_outside():
    from seqeval import metrics as sq

    names = ["B-PER", "I-PER", "B-LOC", "O"]
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "B-PER", "I-PER"]]
    # sentence 2's last two words were cut: no first sub-token, predicted "O"
    data = TaggedTokens(ids=[np.zeros(6, np.int32), np.zeros(4, np.int32)],
                        targets=[np.asarray([IGNORE, 0, 1, IGNORE, 3, 2]), np.asarray([IGNORE, 3, IGNORE, 2])],
                        first_tokens=[np.asarray([1, 2, 4, 5]), np.asarray([1, 3])],
                        word_index=[np.asarray([0, 1, 2, 3]), np.asarray([0, 1])], truncated=1, words_cut=2)
    logits = [np.log(np.asarray([[.7, .1, .1, .1], [.6, .2, .1, .1], [.1, .1, .1, .7], [.1, .1, .6, .2]])),
              np.log(np.asarray([[.1, .1, .2, .6], [.1, .1, .7, .1]]))]
    predicted = [["B-PER", "B-PER", "O", "B-LOC"], ["O", "B-LOC", "O", "O"]]
    got = tag_metrics(logits, data, gold, names)
    assert got["precision"] == pytest.approx(sq.precision_score(gold, predicted)) == pytest.approx(2 / 4)
    assert got["recall"] == pytest.approx(sq.recall_score(gold, predicted)) == pytest.approx(2 / 4)
    assert got["f1"] == pytest.approx(sq.f1_score(gold, predicted))
    assert got["accuracy"] == pytest.approx(sq.accuracy_score(gold, predicted)) == pytest.approx(5 / 8)
    assert got["loss"] == pytest.approx(-np.log([.7, .2, .7, .6, .6, .7]).mean())


def test_export_gives_the_flax_logits_and_init_from_keeps_the_classifier(tmp_path, hf_config):
    """Random classifier bias so that every parameter's mapping shows in the logits."""
    import torch
    from transformers import AutoModelForTokenClassification

    from neobert_jax.classify.head import TokenClassifier, load_classifier, read_classifier_labels, save_classifier_dir

    config = ModernBertConfig(**{k: v for k, v in hf_config().to_dict().items() if k in
                                 ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads", "local_attention", "pad_token_id", "cls_token_id",
                                  "sep_token_id", "bos_token_id", "eos_token_id")})
    model = TokenClassifier(config, 5, pooling="cls", dropout=0.1, rngs=nnx.Rngs(1))
    bias = model.classifier.bias
    bias.set_value(jax.random.normal(jax.random.PRNGKey(2), bias.get_value().shape))
    save_classifier_dir(model, str(tmp_path / "hf"), labels=["O", "B-A", "I-A", "B-B", "I-B"],
                        problem_type="token_classification", tokenizer_dir=None)
    raw = json.load(open(tmp_path / "hf" / "config.json"))
    assert raw["architectures"] == ["ModernBertForTokenClassification"] and "problem_type" not in raw
    assert raw["classifier_dropout"] == 0.1 and raw["classifier_pooling"] == "cls"
    ids = np.random.default_rng(0).integers(5, 300, (3, 40)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 25:], mask[2, 9:] = 0, 0
    ids[mask == 0] = config.pad_token_id
    ours = np.asarray(model(ids, mask))
    hf = AutoModelForTokenClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    assert ours.shape == (3, 40, 5)
    assert np.abs(ours - theirs)[mask == 1].max() <= 1e-4

    init = read_classifier_labels(str(tmp_path / "hf"))
    assert init["labels"] == ["O", "B-A", "I-A", "B-B", "I-B"] and init["problem_type"] == "token_classification"
    loaded, fresh = load_classifier(str(tmp_path / "hf"), 5, pooling="cls", dropout=0.0, seed=5, runtime={},
                                    config_changes={}, tokens=True)
    assert fresh == [] and np.array_equal(np.asarray(loaded(ids, mask)), ours)
    # a sequence-classification run from it: the token classifier is not its classifier
    _, fresh = load_classifier(str(tmp_path / "hf"), 5, pooling="cls", dropout=0.0, seed=5, runtime={},
                               config_changes={})
    assert fresh == ["classifier.bias", "classifier.weight"]


def test_bad_input_names_file_row_and_column(task, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, hf_dir, rows = task
    cfg = config_for(tmp_path / "run", hf_dir).data

    def error(path, labels=()):
        with pytest.raises(DataError) as caught:
            read_sentences([str(path)], cfg, list(labels))
        return str(caught.value)

    good = ["alice", "went"], ["B-PER", "O"]
    assert error(write_jsonl(tmp_path / "a.jsonl", [good, (["a", "b", "c"], ["O", "O"])])) == (
        f"{tmp_path / 'a.jsonl'}:2: column 'tokens' has 3 words but column 'tags' has 2 tags")
    assert error(write_jsonl(tmp_path / "b.jsonl", [good, ([], [])])) == (
        f"{tmp_path / 'b.jsonl'}:2: column 'tokens' is an empty word list")
    assert error(write_jsonl(tmp_path / "c.jsonl", [good], label="ner_tags")) == (
        f"{tmp_path / 'c.jsonl'}: no column 'tags' (columns: tokens, ner_tags)")
    assert error(write_jsonl(tmp_path / "d.jsonl", [(["a", "b"], [0, 3])])).startswith(
        f"{tmp_path / 'd.jsonl'}:1: column 'tags' holds integer tags; set data.labels")
    with open(tmp_path / "e.conll", "w") as f:
        f.write("alice B-PER\n\nparis\n")
    assert error(tmp_path / "e.conll").startswith(f"{tmp_path / 'e.conll'}:3: 'paris' has no tag")

    pq.write_table(pa.table({"tokens": [["alice", "paris"]], "tags": [[1, 0]]}), tmp_path / "f.parquet")
    assert read_sentences([str(tmp_path / "f.parquet")], cfg, ["O", "B-PER"]).tags == [["B-PER", "O"]]
    pq.write_table(pa.table({"tokens": [["alice"], ["paris"]], "tags": [[1], [7]]}), tmp_path / "g.parquet")
    assert error(tmp_path / "g.parquet", ["O", "B-PER"]) == (
        f"{tmp_path / 'g.parquet'}:row 2: column 'tags': tag 7 is outside data.labels (2 names)")

    import datasets  # HF conll2003's layout: ner_tags a sequence of ClassLabel, named by the folder itself

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    datasets.Dataset.from_dict({"tokens": [["bob", "jones", "ran"]], "ner_tags": [[1, 2, 0]]},
                               features=features).save_to_disk(str(tmp_path / "ds"))
    cfg.label_column = "ner_tags"
    from_folder = read_sentences([str(tmp_path / "ds")], cfg, [])
    assert from_folder.tags == [["B-PER", "I-PER", "O"]] and tag_names(from_folder, []) == ["O", "B-PER", "I-PER"]
    cfg.label_column = "tags"

    conll = read_sentences([str(root / "dev.conll")], cfg, [])
    assert conll.words == [w for w, _ in rows[200:]] and conll.locations[0] == f"{root / 'dev.conll'}:3"
    check_tags(conll, TAGS, "tags")
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[200:203] + [(["bob", "x"], ["B-PER", "B-ORG"])])
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'dev.jsonl'))}:4: column 'tags': tag 'B-ORG' is not one of the "
                                        rf"run's tags \['B-LOC', 'B-PER', 'I-PER', 'O'\]"):
        train_classifier(config_for(tmp_path / "run", hf_dir, **{"data.train_files": str(root / "train.jsonl"),
                                                                  "data.eval_files": dev}))
    assert not os.path.exists(tmp_path / "run")


def test_the_loss_is_the_mean_over_the_batchs_labelled_tokens_however_it_is_split(one_device_mesh, train_cfg):
    """Rows with very different counts of labelled tokens: micro-batches of 2 give the one-batch loss
    and gradients (each micro-batch's sum over the global count, as the MLM step divides)."""
    from types import SimpleNamespace

    from neobert_jax.classify.head import TokenClassifier
    from neobert_jax.classify.task import make_classify_step
    from neobert_jax.runtime import optim, sharding, state

    config = ModernBertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                              num_attention_heads=2, local_attention=8, pad_token_id=3, cls_token_id=1, sep_token_id=2,
                              bos_token_id=1, eos_token_id=2)
    # built under one jit: one compile instead of one per initializer
    model = nnx.jit(lambda: TokenClassifier(config, 3, pooling="cls", dropout=0.0, rngs=nnx.Rngs(0)))()
    parts, params = state.ModelParts.split(model)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 64, (4, 12)).astype(np.int32)
    labels = np.where(rng.random((4, 12)) < [[0.9], [0.1], [0.5], [0.2]], rng.integers(0, 3, (4, 12)), IGNORE)
    batch = {"input_ids": ids, "segment_ids": np.ones_like(ids), "positions": np.broadcast_to(np.arange(12), ids.shape),
             "labels": labels.astype(np.int32)}
    results = []
    for accum in (1, 2):
        cfg = train_cfg(grad_accum_steps=accum)
        optimizer, hparams = optim.Optimizer(cfg), optim.hyperparameters(cfg, 10)
        tx = optimizer.tx(hparams)
        shardings = state.state_shardings(parts, tx, hparams, one_device_mesh)
        setup = SimpleNamespace(parts=parts, mesh=one_device_mesh, shardings=shardings, optimizer=optimizer)
        step = make_classify_step(setup, "token_classification", accum, 0.0, 1)
        train_state = state.create_train_state(params, tx, hparams, shardings, seed=0)
        _, metrics = step(train_state, sharding.global_batch(batch, one_device_mesh))
        results.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    logits = np.asarray(jax.jit(lambda p: parts.merge(p)(ids, np.ones_like(ids)))(params), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labelled = labels != IGNORE
    expected = -np.take_along_axis(log_probs, np.where(labelled, labels, 0)[..., None], -1)[..., 0][labelled].mean()
    assert results[0][0] == pytest.approx(expected, rel=1e-5)
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    assert results[1][1] == pytest.approx(results[0][1], rel=1e-4)


def test_packed_sentences_train_as_one_sentence_a_row(task, tmp_path):
    """Several sentences a row (segments; their tags placed at their tokens) give the losses of one a row."""
    root, hf_dir, _ = task
    values = {"data.train_files": str(root / "train.jsonl"), "train.seq_len": 64, "train.max_steps": 3,
              "train.log_every": 1}
    losses, rows = packed_and_one_a_row(lambda out, pack: config_for(out, hf_dir, **values, **{"data.pack": pack}),
                                        tmp_path)
    assert rows[False] == 16 and rows[True] < 8, rows
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert len(losses[True]) == 3


def test_evaluation_packs_sentences_and_gives_each_ones_logits(task):
    """The evaluator packs several sentences a row; each one's word logits equal its logits alone."""
    from neobert_jax.classify.evaluation import Evaluator
    from neobert_jax.classify.head import load_classifier
    from neobert_jax.classify.tag_eval import first_token_logits
    from neobert_jax.data import load_tokenizer
    from neobert_jax.runtime import sharding, state

    _, hf_dir, rows = task
    model, _ = load_classifier(hf_dir, len(TAGS), pooling="mean", dropout=0.0, seed=0, runtime={},
                               config_changes={}, tokens=True)
    parts, params = state.ModelParts.split(model)
    mesh = sharding.make_mesh(runtime_config.base_config().mesh)
    tokenizer = WordTokenizer(load_tokenizer(hf_dir), SEQ_LEN)
    data = encode_sentences(Sentences([w for w, _ in rows[:40]], [t for _, t in rows[:40]], ["x"] * 40), tokenizer, TAGS)

    def word_logits(batch_size):
        evaluator = Evaluator(parts, mesh, data, batch_size=batch_size, seq_len=SEQ_LEN, pad_id=tokenizer.pad_id,
                              select=first_token_logits(data))
        return evaluator, evaluator.logits(params)

    packed, packed_logits = word_logits(16)
    _, alone_logits = word_logits(1)
    assert max(map(len, packed.chunks[0])) > 1  # rows really hold several sentences
    assert [len(x) for x in packed_logits] == [len(f) for f in data.first_tokens]
    for ours, reference in zip(packed_logits, alone_logits):
        np.testing.assert_allclose(ours, reference, atol=1e-5)
