"""ModernBERT with transformers' sequence- and token-classification heads, and their HF dirs.

`SequenceClassifier` is ModernBertForSequenceClassification: the encoder (`model`), pooling
(the first token, or the mean over the attention mask), the prediction head (`head.dense` ->
GELU -> `head.norm`), dropout and `classifier`. `TokenClassifier` is
ModernBertForTokenClassification: the same head, dropout and classifier on every token, no
pooling. Parameter paths mirror HF names, so `neobert_jax.hf.weights` maps them both ways unchanged.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from neobert_jax.config import ModernBertConfig
from neobert_jax.fileio import atomic_dir
from neobert_jax.hf import load_pretrained, locate, read_hf_config, read_hf_state_dict
from neobert_jax.hf.checkpoint import restore_params
from neobert_jax.runtime.run_dir import RUN_CONFIG
from neobert_jax.hf.io import copy_tokenizer_files
from neobert_jax.hf.weights import load_state_dict_into_model, state_dict_from_model
from neobert_jax.model.modernbert import Linear, ModernBertModel, PredictionHead, _dropout, _fold, _init_stds

ARCHITECTURE = "ModernBertForSequenceClassification"
TOKEN_ARCHITECTURE = "ModernBertForTokenClassification"
TOKEN_CLASSIFICATION = "token_classification"
IGNORE = -100


class SequenceClassifier(nnx.Module):
    def __init__(self, config: ModernBertConfig, num_outputs: int, *, pooling: str, dropout: float, rngs: nnx.Rngs):
        self.config, self.pooling, self.dropout = config, pooling, dropout
        self.model = ModernBertModel(config, rngs=rngs)
        self.head = PredictionHead(config, _init_stds(config), rngs)
        d = config.hidden_size
        self.classifier = Linear(d, num_outputs, std=d ** -0.5, config=config, use_bias=True,
                                 axes=("embed", "labels"), rngs=rngs)

    def __call__(self, input_ids_BT, attention_mask_BT, dropout_rng=None):
        """(B, labels) float32 logits (regression: (B, 1) values)."""
        h_BTD = self.model(input_ids_BT, attention_mask_BT, dropout_rng=_fold(dropout_rng, 0))
        if self.pooling == "cls":
            pooled_BD = h_BTD[:, 0]
        else:
            mask_BT1 = jnp.asarray(attention_mask_BT)[..., None].astype(h_BTD.dtype)
            pooled_BD = (h_BTD * mask_BT1).sum(1) / mask_BT1.sum(1)
        x_BD = _dropout(self.head(pooled_BD), self.dropout, _fold(dropout_rng, 1))
        return self.classifier(x_BD).astype(jnp.float32)


class TokenClassifier(SequenceClassifier):
    """Per-token logits; `pooling` is kept only for the exported config's classifier_pooling."""

    def __call__(self, input_ids_BT, attention_mask_BT, dropout_rng=None):
        """(B, T, labels) float32 logits."""
        h_BTD = self.model(input_ids_BT, attention_mask_BT, dropout_rng=_fold(dropout_rng, 0))
        x_BTD = _dropout(self.head(h_BTD), self.dropout, _fold(dropout_rng, 1))
        return self.classifier(x_BTD).astype(jnp.float32)


def token_nll_sum(logits_BTL, labels_BT):
    """Summed cross-entropy over the tokens whose label is not IGNORE; the caller divides by the
    global batch's count of them (as the MLM step does), so gradient accumulation and sharding do
    not change the loss."""
    labelled = labels_BT != IGNORE
    nll = optax.softmax_cross_entropy_with_integer_labels(logits_BTL, jnp.where(labelled, labels_BT, 0))
    return jnp.sum(jnp.where(labelled, nll, 0.0))


def problem_loss(problem_type: str, logits_BL, labels):
    """transformers' loss of each problem type: cross-entropy, BCE with logits, MSE."""
    if problem_type == "single_label_classification":
        return optax.softmax_cross_entropy_with_integer_labels(logits_BL, labels).mean()
    if problem_type == "multi_label_classification":
        return optax.sigmoid_binary_cross_entropy(logits_BL, labels).mean()
    return jnp.square(logits_BL[:, 0] - labels).mean()


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
    """{"labels", "problem_type", "pooling", "architecture"} of an HF ModernBertForSequenceClassification
    or ModernBertForTokenClassification dir, or of a classification run's dir or checkpoint; else None."""
    if locate(path).params is not None:
        record = _classification_run(path)
        if record is None:
            return None
        k = record["classifier"]
        tokens = k["problem_type"] == TOKEN_CLASSIFICATION
        return {"labels": record["resolved"]["labels"], "problem_type": k["problem_type"], "pooling": k["pooling"],
                "architecture": TOKEN_ARCHITECTURE if tokens else ARCHITECTURE, "dropout": k.get("dropout", 0.0)}
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return None
    with open(config_path) as f:
        raw = json.load(f)
    architecture = next((a for a in raw.get("architectures") or [] if a in (ARCHITECTURE, TOKEN_ARCHITECTURE)), None)
    if architecture is None:
        return None
    id2label = raw.get("id2label") or {}
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    problem_type = TOKEN_CLASSIFICATION if architecture == TOKEN_ARCHITECTURE else raw.get("problem_type")
    return {"labels": labels, "problem_type": problem_type, "pooling": raw.get("classifier_pooling"),
            "architecture": architecture}


def load_classifier(path: str, num_outputs: int, *, pooling: str, dropout: float, seed: int, runtime: dict,
                    config_changes: dict, tokens: bool = False) -> tuple[SequenceClassifier, list[str]]:
    """-> (model, the HF names that start fresh): the encoder of an HF dir (any ModernBERT head) or a
    project checkpoint, plus its `head` and `classifier` where it has them, as transformers'
    from_pretrained takes them (an MLM dir gives `head`, not `classifier`). `tokens`: a
    TokenClassifier; the classifier of the other architecture starts fresh (its outputs mean other
    things)."""
    init = read_classifier_labels(path)
    files = locate(path)
    if files.params is None:
        model_config, state_dict = read_hf_config(path, **runtime), read_hf_state_dict(path)
    elif init is None:  # an MLM run or model dir
        loaded, _ = load_pretrained(path, seed=seed, **runtime)
        model_config, state_dict = loaded.config, state_dict_from_model(loaded)
    else:  # a classification run: its classifier's own parameters
        model_config = ModernBertConfig.from_json_file(files.config, **runtime)
        kind = TokenClassifier if init["architecture"] == TOKEN_ARCHITECTURE else SequenceClassifier
        saved = nnx.eval_shape(lambda: kind(model_config, max(len(init["labels"]), 1), pooling=init["pooling"],
                                            dropout=init["dropout"], rngs=nnx.Rngs(seed)))
        graphdef, params, rest = nnx.split(saved, nnx.Param, ...)
        nnx.replace_by_pure_dict(params, restore_params(files.params, nnx.to_pure_dict(params)))
        state_dict = state_dict_from_model(nnx.merge(graphdef, params, rest))
    if init and init["architecture"] != (TOKEN_ARCHITECTURE if tokens else ARCHITECTURE):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    model_config = model_config.replace(**config_changes)
    model = (TokenClassifier if tokens else SequenceClassifier)(model_config, num_outputs, pooling=pooling,
                                                                dropout=dropout, rngs=nnx.Rngs(seed))
    fresh, _ = load_state_dict_into_model(model, state_dict, source=path)
    return model, fresh


def save_classifier_dir(model: SequenceClassifier, out_dir: str, *, labels: list[str], problem_type: str,
                        tokenizer_dir: str | None, overwrite: bool = False) -> None:
    """A dir that `AutoModelForSequenceClassification` (a TokenClassifier: AutoModelForTokenClassification)
    `.from_pretrained` loads to this model's logits (regression: one output named `labels[0]`)."""
    from safetensors.numpy import save_file

    tokens = isinstance(model, TokenClassifier)
    config = model.config.to_hf_dict()
    config.update(architectures=[TOKEN_ARCHITECTURE if tokens else ARCHITECTURE],
                  id2label={str(i): name for i, name in enumerate(labels)},
                  label2id={name: i for i, name in enumerate(labels)},
                  classifier_pooling=model.pooling, classifier_dropout=model.dropout)
    if not tokens:  # transformers' configs refuse problem types other than the sequence ones
        config["problem_type"] = problem_type
    weights = {k: np.ascontiguousarray(v) for k, v in state_dict_from_model(model).items()}
    with atomic_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        copy_tokenizer_files(tokenizer_dir, tmp)

