"""Sequence- and token-classification models of either family, and their HF dirs.

The family's part (`runtime.model_init.architectures()[...].classifier`) is the encoder, the head
and the HF names; the rest is shared. `SequenceClassifier`: the encoder (`model`), pooling (the
first token, or the mean over the attention mask), the family's head, dropout and `classifier`:
for ModernBERT that is transformers' ModernBertForSequenceClassification (head `dense` -> GELU ->
`norm`), for NeoBERT the release's NeoBERTForSequenceClassification (`dense` -> tanh).
`TokenClassifier`: no pooling, the family's token head (ModernBERT's same head; NeoBERT none),
dropout and classifier on every token. Parameter paths mirror the HF names, so the family's state-dict
mapping converts them both ways.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from neobert_jax.contrastive.pooling import pool_rows
from neobert_jax.fileio import atomic_dir
from neobert_jax.hf import load_pretrained, locate, read_hf_state_dict, read_model_config
from neobert_jax.hf.checkpoint import restore_params
from neobert_jax.hf.io import copy_tokenizer_files
from neobert_jax.model.modernbert import Linear, apply_dropout, fold_rng
from neobert_jax.runtime.model_init import architecture_of, architectures
from neobert_jax.runtime.run_dir import RUN_CONFIG

TOKEN_CLASSIFICATION = "token_classification"
IGNORE = -100


class SequenceClassifier(nnx.Module):
    tokens = False

    def __init__(self, config, num_outputs: int, *, pooling: str, dropout: float, rngs: nnx.Rngs):
        self.config, self.pooling, self.dropout = config, pooling, dropout
        family = architecture_of(config).classifier
        self.model = family.encoder_class(config, rngs=rngs)
        build = family.token_head if self.tokens else family.sequence_head
        self.head = build(config, rngs) if build is not None else None
        self.dropout_before_head = family.dropout_before_head and self.head is not None
        d = config.hidden_size
        self.classifier = Linear(d, num_outputs, std=d ** -0.5, config=config, use_bias=True,
                                 axes=("embed", "labels"), rngs=rngs)

    def _classify(self, x, dropout_rng):
        """The head (if any; NeoBERT's release drops out its input too), dropout, then the classifier, in float32."""
        if self.dropout_before_head:
            x = apply_dropout(x, self.dropout, fold_rng(dropout_rng, 1))
        x = self.head(x) if self.head is not None else x
        return self.classifier(apply_dropout(x, self.dropout, dropout_rng)).astype(jnp.float32)

    def __call__(self, input_ids_BT, attention_mask_BT, dropout_rng=None):
        """(B, labels) float32 logits (regression: (B, 1) values)."""
        h_BTD = self.model(input_ids_BT, attention_mask_BT, dropout_rng=fold_rng(dropout_rng, 0))
        if self.pooling == "cls":
            pooled_BD = h_BTD[:, 0]
        else:
            mask_BT1 = jnp.asarray(attention_mask_BT)[..., None].astype(h_BTD.dtype)
            pooled_BD = (h_BTD * mask_BT1).sum(1) / mask_BT1.sum(1)
        return self._classify(pooled_BD, fold_rng(dropout_rng, 1))


    def packed(self, input_ids_RT, segment_ids_RT, positions_RT, slots: int, dropout_rng=None):
        """(R, slots, labels) float32 logits of the examples packed in each row (segment k + 1 is
        slot k; an empty slot's pooled vector is zeros)."""
        h_RTD = self.model(input_ids_RT, segment_ids_BT=segment_ids_RT, positions_BT=positions_RT,
                           dropout_rng=fold_rng(dropout_rng, 0))
        pooled_RSD = pool_rows(h_RTD, segment_ids_RT, positions_RT, slots, self.pooling).astype(h_RTD.dtype)
        return self._classify(pooled_RSD, fold_rng(dropout_rng, 1))


class TokenClassifier(SequenceClassifier):
    """Per-token logits; `pooling` is kept only for the exported config's classifier_pooling."""

    tokens = True

    def __call__(self, input_ids_BT, attention_mask_BT, dropout_rng=None):
        """(B, T, labels) float32 logits."""
        h_BTD = self.model(input_ids_BT, attention_mask_BT, dropout_rng=fold_rng(dropout_rng, 0))
        return self._classify(h_BTD, fold_rng(dropout_rng, 1))

    def packed(self, input_ids_RT, segment_ids_RT, positions_RT, slots: int, dropout_rng=None):
        """(R, T, labels) float32 logits of rows holding several sentences (`slots` is unused)."""
        h_RTD = self.model(input_ids_RT, segment_ids_BT=segment_ids_RT, positions_BT=positions_RT,
                           dropout_rng=fold_rng(dropout_rng, 0))
        return self._classify(h_RTD, fold_rng(dropout_rng, 1))


def token_nll_sum(logits_BTL, labels_BT):
    """Summed cross-entropy over the tokens whose label is not IGNORE; the caller divides by the
    global batch's count of them (as the MLM step does), so gradient accumulation and sharding do
    not change the loss."""
    labelled = labels_BT != IGNORE
    nll = optax.softmax_cross_entropy_with_integer_labels(logits_BTL, jnp.where(labelled, labels_BT, 0))
    return jnp.sum(jnp.where(labelled, nll, 0.0))


def example_losses(problem_type: str, logits_NL, labels):
    """Each example's term of transformers' loss of the problem type (cross-entropy, BCE with logits
    averaged over the labels, squared error), over any leading shape: their mean is that loss."""
    if problem_type == "single_label_classification":
        return optax.softmax_cross_entropy_with_integer_labels(logits_NL, labels)
    if problem_type == "multi_label_classification":
        return optax.sigmoid_binary_cross_entropy(logits_NL, labels).mean(-1)
    return jnp.square(logits_NL[..., 0] - labels)


def _classification_run(path: str) -> dict | None:
    """The run_config.json of the classification run a project checkpoint belongs to, else None."""
    files = locate(path)
    root = os.path.abspath(path)
    run_dir = os.path.dirname(os.path.dirname(root)) if files.kind == "checkpoint step dir" else root
    try:
        with open(os.path.join(run_dir, RUN_CONFIG)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if "classifier" not in record or not (record.get("resolved") or {}).get("labels"):
        return None
    return record


def read_classifier_labels(path: str) -> dict | None:
    """{"labels", "problem_type", "pooling", "tokens"} (and a run's "dropout") of an HF sequence- or
    token-classification dir of either family, or of a classification run's dir or checkpoint; else None."""
    if locate(path).params is not None:
        record = _classification_run(path)
        if record is None:
            return None
        k = record["classifier"]
        return {"labels": record["resolved"]["labels"], "problem_type": k["problem_type"], "pooling": k["pooling"],
                "tokens": k["problem_type"] == TOKEN_CLASSIFICATION, "dropout": k.get("dropout", 0.0)}
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return None
    with open(config_path) as f:
        raw = json.load(f)
    names = {name: i == 1 for arch in architectures().values() for i, name in enumerate(arch.classifier.names)}
    architecture = next((a for a in raw.get("architectures") or [] if a in names), None)
    if architecture is None:
        return None
    id2label = raw.get("id2label") or {}
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    tokens = names[architecture]
    return {"labels": labels, "problem_type": TOKEN_CLASSIFICATION if tokens else raw.get("problem_type"),
            "pooling": raw.get("classifier_pooling"), "tokens": tokens}


def load_classifier(path: str, num_outputs: int, *, pooling: str, dropout: float, seed: int, runtime: dict,
                    config_changes: dict, tokens: bool = False) -> tuple[SequenceClassifier, list[str]]:
    """-> (model, the HF names that start fresh): the encoder of an HF dir (any head of its family) or a
    project checkpoint, plus its head and `classifier` where it has them, as transformers'
    from_pretrained takes them (a ModernBERT MLM dir gives `head`, not `classifier`). `tokens`: a
    TokenClassifier; the classifier of the other kind starts fresh (its outputs mean other things).
    `config_changes`: config.model's dropout keys, mapped onto the family's fields."""
    init = read_classifier_labels(path)
    files = locate(path)
    model_config = read_model_config(path, **runtime)
    arch = architecture_of(model_config)
    family = arch.classifier
    if files.params is None:
        state_dict = read_hf_state_dict(path)
    elif init is None:  # an MLM run or model dir
        loaded, _ = load_pretrained(path, seed=seed, **runtime)
        state_dict = family.state_dict(loaded)
    else:  # a classification run: its classifier's own parameters
        kind = TokenClassifier if init["tokens"] else SequenceClassifier
        saved = nnx.eval_shape(lambda: kind(model_config, max(len(init["labels"]), 1), pooling=init["pooling"],
                                            dropout=init["dropout"], rngs=nnx.Rngs(seed)))
        graphdef, params, rest = nnx.split(saved, nnx.Param, ...)
        nnx.replace_by_pure_dict(params, restore_params(files.params, nnx.to_pure_dict(params)))
        state_dict = family.state_dict(nnx.merge(graphdef, params, rest))
    if init and init["tokens"] != tokens:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    model_config = model_config.replace(**arch.model_fields(config_changes))
    model = (TokenClassifier if tokens else SequenceClassifier)(model_config, num_outputs, pooling=pooling,
                                                                dropout=dropout, rngs=nnx.Rngs(seed))
    fresh, _ = family.load_state_dict(model, state_dict, source=path)
    return model, fresh


def save_classifier_dir(model: SequenceClassifier, out_dir: str, *, labels: list[str], problem_type: str,
                        tokenizer_dir: str | None, overwrite: bool = False) -> None:
    """A dir that `AutoModelForSequenceClassification` (a TokenClassifier: AutoModelForTokenClassification)
    `.from_pretrained` loads to this model's logits (regression: one output named `labels[0]`); a NeoBERT
    one with trust_remote_code=True, as it carries its modeling code."""
    import shutil

    from safetensors.numpy import save_file

    family = architecture_of(model.config).classifier
    config, files = family.hf_config(model.config, family.names[model.tokens])
    config.update(id2label={str(i): name for i, name in enumerate(labels)},
                  label2id={name: i for i, name in enumerate(labels)},
                  classifier_pooling=model.pooling, classifier_dropout=model.dropout)
    if not model.tokens:  # transformers' configs refuse problem types other than the sequence ones
        config["problem_type"] = problem_type
    weights = {k: np.ascontiguousarray(v) for k, v in family.state_dict(model).items()}
    with atomic_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        for name, source in files.items():
            shutil.copyfile(source, os.path.join(tmp, name))
        save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        copy_tokenizer_files(tokenizer_dir, tmp)
