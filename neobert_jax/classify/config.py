"""The classification run's config schema: `base_config()` plus its data, classifier and eval
sections, and their validation (through `validate_training` for the shared keys).

The encoder's architecture comes from `init_from` (required); `classifier.*` are the keys of
transformers' ModernBertForSequenceClassification (problem_type, classifier_pooling,
classifier_dropout), written into the exported config.json under those names. problem_type
"token_classification" is ModernBertForTokenClassification instead (configs/tag.py): its data are
word lists and tag lists (data.text_column, data.label_column), and its config.json has no
problem_type (transformers allows only the sequence ones there).
"""

from __future__ import annotations

import functools

import ml_collections

from neobert_jax.contrastive.config import as_list
from neobert_jax.runtime.config import base_config, validate_training

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression", "token_classification")
POOLINGS = ("cls", "mean")
BEST_METRIC = "eval_loss"  # what train.keep_best_checkpoint ranks by (lowest)


def classify_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.output_dir = "runs/classify"
    c.init_from = ""  # required: an HF ModernBERT dir (MLM or sequence classification) or a project checkpoint

    files = functools.partial(ml_collections.FieldReference, "", field_type=object)  # a str or a list
    c.data = ml_collections.ConfigDict({
        "train_files": files(),  # .csv / .tsv / .jsonl / .parquet; globs, "a,b" or a list
        "eval_files": files(),  # same columns; evaluated every train.eval_every steps and at the end
        "text_column": "text",
        "text_pair_column": "",  # set for sentence pairs: [CLS] text [SEP] pair [SEP]
        # multi-label: a list, or names separated by ";"; regression: a number; token classification: a
        # list of tags (names, or integers that data.labels names), one per word of data.text_column's list
        "label_column": "label",
        # label names in output order ("neg,pos"); "" = init_from's id2label when it has a classifier,
        # else the training labels sorted (numbers numerically)
        "labels": files(),
        "shuffle": True,
        # several examples a row (each its own segment: the same function, less padding); False: one a row
        "pack": True,
    })
    c.classifier = ml_collections.ConfigDict({
        # | multi_label_classification | regression | token_classification
        "problem_type": "single_label_classification",
        "pooling": "cls",  # cls | mean (over the text's tokens): transformers' classifier_pooling
        "dropout": 0.0,  # on the head's output, before the classifier: transformers' classifier_dropout
    })
    c.eval = ml_collections.ConfigDict({"batch_size": 64})

    t = c.train
    t.epochs = 3
    t.batch_size = 32
    t.seq_len = 512
    t.learning_rate = 5e-5
    t.schedule = "linear"
    t.warmup_steps = 0
    t.warmup_fraction = 0.1
    t.log_every = 10
    t.save_every = 1000
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key."""
    validate_training(config)

    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise ValueError(f"config.{key}: {msg}")

    t, d, k = config.train, config.data, config.classifier
    need(t.batch_size > 0, "train.batch_size", f"must be positive, got {t.batch_size}")
    need(bool(config.init_from), "init_from", "required: an HF model dir or a project checkpoint to fine-tune")
    need(bool(as_list(d.train_files)), "data.train_files", "required")
    need(bool(d.text_column), "data.text_column", "must be set")
    need(bool(d.label_column), "data.label_column", "must be set")
    need(k.problem_type in PROBLEM_TYPES, "classifier.problem_type",
         f"{k.problem_type!r} is not one of {PROBLEM_TYPES}")
    need(k.pooling in POOLINGS, "classifier.pooling", f"{k.pooling!r} is not one of {POOLINGS}")
    need(0.0 <= k.dropout < 1.0, "classifier.dropout", f"must be in [0, 1), got {k.dropout}")
    need(not (k.problem_type == "regression" and as_list(d.labels)), "data.labels",
         "regression has one output and no label names; leave it empty")
    need(len(set(as_list(d.labels))) == len(as_list(d.labels)), "data.labels", "names a label twice")
    need(not (k.problem_type == "token_classification" and d.text_pair_column), "data.text_pair_column",
         "token classification tags one word list; leave it empty")
    need(isinstance(d.pack, bool), "data.pack", f"must be True or False, got {d.pack!r}")
    need(config.eval.batch_size > 0, "eval.batch_size", "must be positive")
    need(t.seq_len >= 4, "train.seq_len", "must leave room for [CLS] text [SEP] pair [SEP]")
    need(bool(as_list(d.eval_files)) or not t.keep_best_checkpoint, "train.keep_best_checkpoint",
         "needs data.eval_files")
