"""Token classification's evaluation: the logits at each sentence's first sub-tokens, their loss,
seqeval's entity-level micro precision / recall / F1 (conlleval's lenient BIO reading, what
transformers' run_ner.py reports), and word accuracy.

Every word of the eval set counts: a word cut by train.seq_len has no logits and is predicted "O",
so truncation shows in the metrics instead of silently shrinking the eval set. The loss is over
the words that have logits, the training loss's definition.
"""

from __future__ import annotations

import json
import warnings

import numpy as np

from neobert_jax.classify.tag_data import OUTSIDE, TaggedTokens


def first_token_logits(data: TaggedTokens):
    """Evaluator's `select`: each sentence's logits at its words' first sub-tokens, (words, labels)."""

    def select(logits_BTL: np.ndarray, indices) -> list[np.ndarray]:
        return [row[data.first_tokens[i]].astype(np.float64) for row, i in zip(logits_BTL, indices)]

    return select


def predicted_tags(word_logits: list[np.ndarray], data: TaggedTokens, lengths: list[int], names: list[str]):
    """Each sentence's predicted tag per word: the argmax at its first sub-token, "O" where cut."""
    out = []
    for logits, words, n in zip(word_logits, data.word_index, lengths):
        tags = [OUTSIDE] * n
        for word, label in zip(words, logits.argmax(1) if len(logits) else []):
            tags[word] = names[label]
        out.append(tags)
    return out


def tag_metrics(word_logits: list[np.ndarray], data: TaggedTokens, gold: list[list[str]],
                names: list[str]) -> dict[str, float]:
    """loss, precision, recall, f1 (entities, micro over types) and accuracy (words)."""
    from seqeval import metrics as sq

    nll, count = 0.0, 0
    for logits, targets, positions in zip(word_logits, data.targets, data.first_tokens):
        if len(logits):
            shifted = logits - logits.max(1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
            nll -= log_probs[np.arange(len(positions)), targets[positions]].sum()
            count += len(positions)
    predicted = predicted_tags(word_logits, data, [len(g) for g in gold], names)
    with warnings.catch_warnings():  # no predicted entity (an untrained head) gives 0, said as 0
        warnings.simplefilter("ignore")
        return {"loss": nll / max(count, 1),
                "precision": float(sq.precision_score(gold, predicted)),
                "recall": float(sq.recall_score(gold, predicted)),
                "f1": float(sq.f1_score(gold, predicted)),
                "accuracy": float(sq.accuracy_score(gold, predicted))}


def write_tag_predictions(path: str, word_logits: list[np.ndarray], data: TaggedTokens, words: list[list[str]],
                          gold: list[list[str]], names: list[str]) -> None:
    """One JSON line per eval sentence: its words, gold tags and predicted tags."""
    predicted = predicted_tags(word_logits, data, [len(g) for g in gold], names)
    with open(path, "w") as f:
        for row_words, row_gold, row_predicted in zip(words, gold, predicted):
            f.write(json.dumps({"words": row_words, "tags": row_gold, "predicted": row_predicted}) + "\n")
