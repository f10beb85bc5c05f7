"""Tagged sentences for token classification: reading them (JSONL, Parquet, `datasets` folders,
CoNLL text), their tag names, and their word-aligned tokens.

Each sentence is a list of words and a list of tags, one per word. Words are tokenized as
transformers' token-classification example (run_ner.py) tokenizes them: `is_split_into_words`,
with a byte-level BPE's prefix space switched on (as `add_prefix_space=True` does for RoBERTa), so
every word is encoded as it reads inside running text; only the first sub-token of a word carries
its tag, the others and the special tokens get IGNORE (no loss, no metric). A word whose first
sub-token falls past train.seq_len is cut: counted for the start lines, predicted "O" at evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from neobert_jax.contrastive.columns import open_table
from neobert_jax.data.errors import DataError
from neobert_jax.data.sources import load_datasets_dir

IGNORE = -100  # transformers' ignore index: no loss, no metric
CONLL_SUFFIXES = (".conll",)
TAG_SUFFIXES = (".jsonl", ".parquet", *CONLL_SUFFIXES)
DOCSTART = "-DOCSTART-"
OUTSIDE = "O"  # what a cut word is predicted


@dataclasses.dataclass
class Sentences:
    words: list[list[str]]
    tags: list[list[str]]  # tag names (integer tags already named through data.labels)
    locations: list[str]  # "file:line" or "file:row N" of each sentence, for errors
    class_names: list[str] = dataclasses.field(default_factory=list)  # a datasets folder's ClassLabel names


def _conll(path: str) -> tuple[list, list, list]:
    """`word ... tag` lines (the first field the word, the last the tag), a blank line between
    sentences, -DOCSTART- lines skipped."""
    words, tags, locations = [], [], []
    sentence: list[tuple[int, str, str]] = []  # (line, word, tag)

    def close():
        if sentence:
            words.append([w for _, w, _ in sentence])
            tags.append([t for _, _, t in sentence])
            locations.append(f"{path}:{sentence[0][0]}")
        sentence.clear()

    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == DOCSTART:
                close()
            elif len(fields) < 2:
                raise DataError(f"{path}:{number}: {line.strip()!r} has no tag (expected 'word tag', the tag last, "
                                "a blank line between sentences)")
            else:
                sentence.append((number, fields[0], fields[-1]))
    close()
    return words, tags, locations


def _tag_name(value, names: list[str], where: str, column: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: column {column!r} holds {value!r}, expected a tag name or an integer tag")
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: column {column!r} holds an empty tag")
        return value.strip()
    if not names:
        raise DataError(f"{where}: column {column!r} holds integer tags; set data.labels to their names in index "
                        "order (e.g. conll2003's ner_tags: O,B-PER,I-PER,B-ORG,I-ORG,B-LOC,I-LOC,B-MISC,I-MISC)")
    if not 0 <= value < len(names):
        raise DataError(f"{where}: column {column!r}: tag {value} is outside data.labels ({len(names)} names)")
    return names[value]


def _class_label_names(path: str, column: str) -> list[str]:
    """The tag names of a datasets folder whose column is a sequence of ClassLabel (HF conll2003's
    ner_tags), else []."""
    if not os.path.isdir(path):
        return []
    feature = getattr(load_datasets_dir(path).features.get(column), "feature", None)  # Sequence / List
    return [str(name) for name in getattr(feature, "names", None) or []]


def read_sentences(files: list[str], data_cfg, int_names: list[str]) -> Sentences:
    """Every file's sentences; `int_names` (data.labels), else a datasets folder's ClassLabel names,
    name integer tags. A bad row is a DataError naming file, row and column."""
    out = Sentences([], [], [])
    text, label = data_cfg.text_column, data_cfg.label_column
    for path in files:
        names = int_names
        if path.endswith(CONLL_SUFFIXES):
            words, tags, locations = _conll(path)
        else:
            table = open_table(path)
            words, tags = table.column(text), table.column(label)
            locations = [table.location(i) for i in range(len(table))]
            if not names and (names := _class_label_names(path, label)) and not out.class_names:
                out.class_names = names
        if not words:
            raise DataError(f"{path}: no sentences")
        for row_words, row_tags, where in zip(words, tags, locations):
            if not isinstance(row_words, (list, tuple)) or not all(isinstance(w, str) for w in row_words):
                raise DataError(f"{where}: column {text!r} holds {row_words!r:.80}, expected a list of words")
            if not row_words:
                raise DataError(f"{where}: column {text!r} is an empty word list")
            if any(not w.strip() for w in row_words):
                raise DataError(f"{where}: column {text!r}: word {[w.strip() for w in row_words].index('') + 1} "
                                "is empty")
            if not isinstance(row_tags, (list, tuple)):
                raise DataError(f"{where}: column {label!r} holds {row_tags!r:.80}, expected a list of tags")
            if len(row_tags) != len(row_words):
                raise DataError(f"{where}: column {text!r} has {len(row_words)} words but column {label!r} has "
                                f"{len(row_tags)} tags")
            out.words.append(list(row_words))
            out.tags.append([_tag_name(t, names, where, label) for t in row_tags])
            out.locations.append(where)
    return out


def tag_names(sentences: Sentences, given: list[str]) -> list[str]:
    """`given`, else a datasets folder's ClassLabel names, else the training tags sorted: the order
    transformers' run_ner.py picks."""
    return list(given or sentences.class_names) or sorted({t for row in sentences.tags for t in row})


def check_tags(sentences: Sentences, names: list[str], column: str) -> None:
    """A tag outside `names` is an error naming its file, row and column."""
    allowed = set(names)
    for row, where in zip(sentences.tags, sentences.locations):
        for tag in row:
            if tag not in allowed:
                raise DataError(f"{where}: column {column!r}: tag {tag!r} is not one of the run's tags {names} "
                                "(data.labels, else init_from's id2label, else the training data's)")


def _prefix_spaces(pre_tokenizer: dict | None) -> None:
    """Each word encoded with the space that precedes it inside running text: transformers'
    add_prefix_space=True for byte-level BPE (ModernBERT, RoBERTa, GPT-2), a "▁" on every word for
    Metaspace. In place, through Sequence pre-tokenizers."""
    if not pre_tokenizer:
        return
    kind = pre_tokenizer.get("type")
    if kind == "ByteLevel":
        pre_tokenizer["add_prefix_space"] = True
    elif kind == "Metaspace":
        pre_tokenizer["prepend_scheme"] = "always"
    elif kind == "Sequence":
        for part in pre_tokenizer.get("pretokenizers", []):
            _prefix_spaces(part)


@dataclasses.dataclass
class TaggedTokens:
    ids: list[np.ndarray]  # each sentence's ids with the tokenizer's specials, cut to seq_len
    targets: list[np.ndarray]  # int32 per token: the word's tag index at its first sub-token, else IGNORE
    first_tokens: list[np.ndarray]  # positions of the kept words' first sub-tokens
    word_index: list[np.ndarray]  # the word each of those positions starts
    truncated: int  # sentences cut
    words_cut: int  # words without a first sub-token in the kept tokens

    def __len__(self) -> int:
        return len(self.ids)


class WordTokenizer:
    """Word lists -> ids and first-sub-token positions, cut to `seq_len` by the tokenizer's own
    truncation (what `tokenizer(words, is_split_into_words=True, truncation=True)` gives)."""

    def __init__(self, tokenizer, seq_len: int):
        from tokenizers import Tokenizer

        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        _prefix_spaces(spec.get("pre_tokenizer"))
        spec["truncation"], spec["padding"] = None, None
        self.full = Tokenizer.from_str(json.dumps(spec))
        self.cut = Tokenizer.from_str(json.dumps(spec))
        self.cut.enable_truncation(seq_len)
        self.seq_len = seq_len
        self.pad_id = tokenizer.pad_token_id

    def encode(self, words: list[list[str]]):
        """-> the encodings (`ids`, `word_ids`) and how many were cut."""
        encodings = self.full.encode_batch(words, is_pretokenized=True)
        long = [i for i, e in enumerate(encodings) if len(e.ids) > self.seq_len]
        for i, e in zip(long, self.cut.encode_batch([words[i] for i in long], is_pretokenized=True)):
            encodings[i] = e
        return encodings, len(long)


def align(word_ids: list, tag_index: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """run_ner.py's rule: -> (per-token targets, first sub-token positions, their words)."""
    targets = np.full(len(word_ids), IGNORE, np.int32)
    positions, words, previous = [], [], None
    for p, word in enumerate(word_ids):
        if word is not None and word != previous:
            targets[p] = tag_index[word]
            positions.append(p)
            words.append(word)
        previous = word
    return targets, np.asarray(positions, np.int32), np.asarray(words, np.int32)


def encode_sentences(sentences: Sentences, tokenizer: WordTokenizer, names: list[str]) -> TaggedTokens:
    index = {name: i for i, name in enumerate(names)}
    encodings, truncated = tokenizer.encode(sentences.words)
    out = TaggedTokens([], [], [], [], truncated, 0)
    for encoding, tags in zip(encodings, sentences.tags):
        targets, positions, words = align(encoding.word_ids, [index[t] for t in tags])
        out.ids.append(np.asarray(encoding.ids, np.int32))
        out.targets.append(targets)
        out.first_tokens.append(positions)
        out.word_index.append(words)
        out.words_cut += len(tags) - len(words)
    return out
