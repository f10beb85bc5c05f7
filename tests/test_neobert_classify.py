"""Classification and tagging from a NeoBERT init: a few-step CLI run of configs/classify.py and of
configs/tag.py from a tiny NeoBERT export trains (the loss goes down, the logits move) and exports a
dir that transformers loads with trust_remote_code (AutoModelForSequenceClassification,
AutoModelForTokenClassification) to our logits; our torch head is the JAX head, with random head
weights and either pooling; a classification run dir or export continues its head, and a token
classifier's does not carry over to a sequence classifier."""

import json
import os
import random
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from neobert_jax.classify.head import (SequenceClassifier, TokenClassifier, load_classifier, read_classifier_labels,
                                       save_classifier_dir)
from neobert_jax.hf import save_neobert_dir
from neobert_jax.model import NeoBertForMaskedLM
from neobert_jax.neobert_config import NeoBertConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POS = "good great fine happy bright warm kind".split()
NEG = "bad awful sad dark cold cruel grim".split()
CITY = "paris rome berlin madrid vienna".split()
FILL = "the a met saw in near went to with and".split()
RUN = {"train.seq_len": 16, "train.batch_size": 16, "train.max_steps": 12, "train.learning_rate": 3e-3,
       "train.log_every": 1, "train.save_every": 12, "compilation_cache_dir": ""}


def tiny_config(tokenizer, **changes) -> NeoBertConfig:
    return NeoBertConfig(vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, max_length=64,
                         pad_token_id=tokenizer.pad_token_id, **changes)


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_tokenizer_dir):
    """A random-init tiny NeoBERT export with its tokenizer, a two-class CSV task (which kind of words
    a sentence has) and a JSONL tagging task (which words are cities)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("neobert_classify")
    rng = random.Random(0)
    texts = [(" ".join(rng.choice(POS) for _ in range(rng.randint(3, 7))), "pos") if i % 2 else
             (" ".join(rng.choice(NEG) for _ in range(rng.randint(3, 7))), "neg") for i in range(96)]
    with open(root / "train.csv", "w") as f:
        f.write("text,label\n" + "".join(f"{t},{label}\n" for t, label in texts[:64]))
    with open(root / "dev.csv", "w") as f:
        f.write("text,label\n" + "".join(f"{t},{label}\n" for t, label in texts[64:]))
    tagged = []
    for _ in range(96):
        words = [rng.choice(CITY + FILL) for _ in range(rng.randint(3, 7))]
        tagged.append({"tokens": words, "tags": ["B-LOC" if w in CITY else "O" for w in words]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tagged[:64]))
    (root / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tagged[64:]))
    tokenizer_dir = tiny_tokenizer_dir(str(root), texts=[t for t, _ in texts] + [" ".join(r["tokens"]) for r in tagged])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # as a user of the export encodes
    save_neobert_dir(NeoBertForMaskedLM(tiny_config(tokenizer), rngs=nnx.Rngs(0)), str(root / "neobert"),
                     tokenizer_dir=tokenizer_dir)
    return root, str(root / "neobert"), tokenizer


def finetune(config: str, out, init_from, train, dev) -> str:
    command = [sys.executable, os.path.join(REPO, "scripts", "finetune.py"), "--config",
               os.path.join(REPO, "configs", config), f"--config.init_from={init_from}",
               f"--config.data.train_files={train}", f"--config.data.eval_files={dev}",
               f"--config.output_dir={out}", *[f"--config.{k}={v}" for k, v in RUN.items()]]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def losses(run_dir) -> tuple[list[float], list[float]]:
    """(training losses by step, eval losses by evaluation) of a run's metrics.jsonl."""
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return ([r["loss"] for r in records if "loss" in r],
            [r["eval_loss"] for r in records if "eval_loss" in r])


def encoded(tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="np")
    return batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)


@pytest.fixture(scope="module")
def sequence_run(task, tmp_path_factory):
    root, neobert, _ = task
    out = tmp_path_factory.mktemp("neobert_seq") / "run"
    return out, finetune("classify.py", out, neobert, root / "train.csv", root / "dev.csv")


def test_sequence_classification_trains_and_exports_what_transformers_loads_to_our_logits(task, sequence_run):
    import torch
    from transformers import AutoModelForSequenceClassification

    root, _, tokenizer = task
    out, log = sequence_run
    assert "classifier: classifier.bias, classifier.weight, dense.bias, dense.weight start fresh" in log
    train, evals = losses(out)
    assert len(train) == RUN["train.max_steps"] and np.mean(train[-3:]) < np.mean(train[:3])
    assert evals[-1] < evals[0]  # the eval set's logits moved, for the better

    config = json.load(open(out / "hf" / "config.json"))
    assert config["architectures"] == ["NeoBERTForSequenceClassification"]
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_neobert.NeoBERTForSequenceClassification"
    assert "AutoModelForMaskedLM" not in config["auto_map"] and config["problem_type"] == "single_label_classification"
    card = (out / "hf" / "README.md").read_text()
    assert "AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)" in card
    hf = AutoModelForSequenceClassification.from_pretrained(out / "hf", trust_remote_code=True).eval()
    assert type(hf).__name__ == "NeoBERTForSequenceClassification" and hf.config.id2label == {0: "neg", 1: "pos"}
    texts = [line.split(",")[0] for line in open(root / "dev.csv").read().splitlines()[1:]]
    with torch.no_grad():
        theirs = hf(**{k: torch.tensor(v).long() for k, v in zip(("input_ids", "attention_mask"),
                                                                 encoded(tokenizer, texts))}).logits.numpy()
    saved = np.asarray([json.loads(line)["logits"] for line in open(out / "eval_predictions.jsonl")])
    assert np.abs(theirs - saved).max() <= 1e-4


def test_a_neobert_classification_run_or_export_continues_its_head(task, sequence_run):
    root, neobert, tokenizer = task
    out, _ = sequence_run
    ids, mask = encoded(tokenizer, ["good warm kind", "sad grim cold cruel bad"])
    init = read_classifier_labels(str(out / "hf"))
    assert init["labels"] == ["neg", "pos"] and not init["tokens"]
    assert read_classifier_labels(str(out))["labels"] == ["neg", "pos"]
    kwargs = dict(pooling="cls", dropout=0.0, seed=7, runtime={}, config_changes={})
    from_export, fresh = load_classifier(str(out / "hf"), 2, **kwargs)
    assert fresh == []
    from_run, fresh = load_classifier(str(out), 2, **kwargs)
    assert fresh == []
    ours = np.asarray(from_export(ids, mask))
    assert np.abs(np.asarray(from_run(ids, mask)) - ours).max() <= 1e-5
    _, fresh = load_classifier(neobert, 2, **kwargs)  # the MLM export: the head starts fresh
    assert fresh == ["classifier.bias", "classifier.weight", "dense.bias", "dense.weight"]
    # a tagger from it: the encoder carries over, the sequence head and classifier do not
    _, fresh = load_classifier(str(out / "hf"), 2, **kwargs, tokens=True)
    assert fresh == ["classifier.bias", "classifier.weight"]


def test_token_classification_trains_and_exports_what_transformers_loads_to_our_logits(task, tmp_path):
    import torch
    from transformers import AutoModelForTokenClassification

    root, neobert, tokenizer = task
    out = tmp_path / "run"
    log = finetune("tag.py", out, neobert, root / "train.jsonl", root / "dev.jsonl")
    assert "classifier: classifier.bias, classifier.weight start fresh" in log
    train, evals = losses(out)
    assert np.mean(train[-3:]) < np.mean(train[:3]) and evals[-1] < evals[0]
    config = json.load(open(out / "hf" / "config.json"))
    assert config["architectures"] == ["NeoBERTForTokenClassification"] and "problem_type" not in config
    assert "AutoModelForTokenClassification.from_pretrained(path, trust_remote_code=True)" in (
        out / "hf" / "README.md").read_text()

    ids, mask = encoded(tokenizer, ["the a met paris", "went to rome with vienna and berlin"])
    ours, fresh = load_classifier(str(out / "hf"), 2, pooling="cls", dropout=0.0, seed=0, runtime={},
                                  config_changes={}, tokens=True)
    assert fresh == []
    start, _ = load_classifier(neobert, 2, pooling="cls", dropout=0.0, seed=0, runtime={}, config_changes={},
                               tokens=True)
    ours_logits = np.asarray(ours(ids, mask))
    assert np.abs(ours_logits - np.asarray(start(ids, mask))).max() > 0.1  # the encoder trained too
    hf = AutoModelForTokenClassification.from_pretrained(out / "hf", trust_remote_code=True).eval()
    assert type(hf).__name__ == "NeoBERTForTokenClassification" and hf.config.id2label == {0: "B-LOC", 1: "O"}
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask)).logits.numpy()
    assert np.abs(ours_logits - theirs)[mask == 1].max() <= 1e-4


@pytest.mark.parametrize("kind,pooling", [(SequenceClassifier, "cls"), (SequenceClassifier, "mean"),
                                          (TokenClassifier, "cls")])
def test_the_torch_heads_are_ours_with_random_weights_and_padding(task, tmp_path, kind, pooling):
    """Random head biases (not zeros), so every tensor's mapping shows in the logits; a tied embedding
    exports no decoder (a classifier has none)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    _, _, tokenizer = task
    model = kind(tiny_config(tokenizer, tie_word_embeddings=True), 3, pooling=pooling, dropout=0.1,
                 rngs=nnx.Rngs(1))
    for i, layer in enumerate([model.classifier] + ([model.head.dense] if model.head is not None else [])):
        layer.bias.set_value(jax.random.normal(jax.random.PRNGKey(i), layer.bias.get_value().shape))
    tokens = kind is TokenClassifier
    save_classifier_dir(model, str(tmp_path / "hf"), labels=["a", "b", "c"],
                        problem_type="token_classification" if tokens else "multi_label_classification",
                        tokenizer_dir=None)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="np") as f:
        assert not [k for k in f.keys() if k.startswith("decoder.")]
    ids, mask = encoded(tokenizer, ["good warm kind and bright", "sad", "paris rome"])
    ours = np.asarray(model(ids, mask))
    auto = AutoModelForTokenClassification if tokens else AutoModelForSequenceClassification
    hf = auto.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    assert hf.config.classifier_pooling == pooling and hf.config.num_labels == 3
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask))
    theirs = out.logits.numpy()
    assert theirs.shape == ours.shape
    assert np.abs(ours - theirs)[mask == 1].max() <= 1e-4 if tokens else np.abs(ours - theirs).max() <= 1e-4
    loaded, fresh = load_classifier(str(tmp_path / "hf"), 3, pooling=pooling, dropout=0.0, seed=5, runtime={},
                                    config_changes={}, tokens=tokens)
    assert fresh == [] and np.array_equal(np.asarray(loaded(ids, mask)), ours)


def test_the_release_head_drops_out_the_pooled_state_before_its_dense():
    """NeoBERT's release: dropout -> dense -> tanh -> dropout -> classifier. The pooled dimensions the
    first dropout zeroes get no gradient into the dense layer; without it they would."""
    import jax.numpy as jnp

    config = NeoBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_length=64, pad_token_id=0)
    model = SequenceClassifier(config, 3, pooling="cls", dropout=0.5, rngs=nnx.Rngs(0))
    x_BD = jax.random.normal(jax.random.key(1), (4, 32))
    rng = jax.random.key(2)
    graph, params = nnx.split(model)

    def loss(params):
        return jnp.sum(nnx.merge(graph, params)._classify(x_BD, rng) ** 2)

    grad_ID = np.asarray(jax.grad(loss)(params)["head"]["dense"]["kernel"][...])
    kept_BD = jax.random.bernoulli(jax.random.fold_in(rng, 1), 1 - 0.5, x_BD.shape)  # apply_dropout's draw
    dropped_I = np.asarray(jnp.all(~kept_BD, axis=0))  # zeroed in every example
    assert 0 < dropped_I.sum() < 32
    assert np.all(grad_ID[dropped_I] == 0) and np.all(np.abs(grad_ID[~dropped_I]).sum(1) > 0)
