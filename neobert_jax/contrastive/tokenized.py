"""Tokenized training columns, in memory or preprocessed on disk (scripts/contrastive_preprocess.py).

Each column is stored as the texts' body tokens (no [CLS]/[SEP], cut to seq_len - 2) in one flat
array plus offsets; the batcher adds the special tokens, exactly as the tokenizer's own template
(checked once) would, so rows match what sentence-transformers feeds the exported model.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from neobert_jax.contrastive.columns import ColumnData
from neobert_jax.data.errors import DataError
from neobert_jax.data.tokenizer import TextEncoder, save_tokenizer, vocab_fingerprint
from neobert_jax.fileio import atomic_dir

FORMAT = "neobert_jax.contrastive/1"
META_FILE = "meta.json"
_ENCODE_BATCH = 4096


@dataclasses.dataclass
class TokenizedColumns:
    names: list[str]
    ids: list[np.ndarray]  # per column: body ids of every text, concatenated
    offsets: list[np.ndarray]  # per column: (examples + 1,) int64 starts
    vectors: np.ndarray | None  # (examples, D) float32 teacher vectors (mse) or (examples, K) scores

    @property
    def num_examples(self) -> int:
        return len(self.offsets[0]) - 1

    def body(self, column: int, example: int) -> np.ndarray:
        offsets = self.offsets[column]
        return self.ids[column][offsets[example]:offsets[example + 1]]


class TextTokenizer:
    """Texts -> body ids cut to `seq_len - 2`, for a tokenizer whose template is [CLS] text [SEP]."""

    def __init__(self, tokenizer, seq_len: int):
        self.encoder = TextEncoder(tokenizer)
        self.body_len = seq_len - 2
        self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        probe = "Return the sum."
        body = self.encoder.encode([probe])[0].tolist()
        if self.encoder.with_specials(probe) != [self.cls_id, *body, self.sep_id]:
            raise DataError("the tokenizer does not wrap a text as [CLS] text [SEP] (its post-processor differs); "
                            "embeddings would not match sentence-transformers'")

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (flat body ids, (n + 1,) offsets)."""
        pieces, lengths = [], []
        for start in range(0, len(texts), _ENCODE_BATCH):
            ids, full_lengths = self.encoder.encode(texts[start:start + _ENCODE_BATCH])
            kept = np.minimum(full_lengths, self.body_len)
            starts = np.cumsum(full_lengths) - full_lengths
            position = np.arange(len(ids)) - np.repeat(starts, full_lengths)
            pieces.append(ids[position < np.repeat(kept, full_lengths)])
            lengths.append(kept)
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return (np.concatenate(pieces) if pieces else np.zeros(0, self.encoder.dtype)), offsets


def tokenize_columns(data: ColumnData, text_tokenizer: TextTokenizer) -> TokenizedColumns:
    encoded = [text_tokenizer.encode(texts) for texts in data.texts]
    return TokenizedColumns(list(data.names), [e[0] for e in encoded], [e[1] for e in encoded], data.vectors)


def save_preprocessed(out_dir: str, data: TokenizedColumns, tokenizer, *, loss: str, seq_len: int,
                      label_column: str, sources: list, overwrite: bool = False,
                      prompts: tuple[str, str] = ("", "")) -> dict:
    meta = {
        "format": FORMAT, "loss": loss, "columns": data.names, "label_column": label_column if loss == "mse" else None,
        "prompts": list(prompts), "seq_len": seq_len, "examples": data.num_examples, "tokenizer": vocab_fingerprint(tokenizer),
        "tokens": int(sum(len(ids) for ids in data.ids)), "sources": sources,
    }
    with atomic_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        for i, (ids, offsets) in enumerate(zip(data.ids, data.offsets)):
            np.save(os.path.join(tmp, f"column-{i}.ids.npy"), ids)
            np.save(os.path.join(tmp, f"column-{i}.offsets.npy"), offsets)
        if data.vectors is not None:
            np.save(os.path.join(tmp, "vectors.npy"), data.vectors)
        save_tokenizer(tokenizer, os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
    return meta


def load_preprocessed(directory: str, tokenizer, *, loss: str, seq_len: int, vector_dim: int,
                      prompts: tuple[str, str] = ("", "")) -> TokenizedColumns:
    """Memory-maps a preprocessed folder after checking it fits this run (tokenizer, loss, lengths)."""
    try:
        with open(os.path.join(directory, META_FILE)) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"data.preprocessed_dir {directory}: no readable {META_FILE} ({e})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{directory}: not a scripts/contrastive_preprocess.py folder (format {meta.get('format')!r})")
    if meta["tokenizer"] != vocab_fingerprint(tokenizer):
        raise DataError(f"{directory} was tokenized with another tokenizer than the run's (the init model's); "
                        "preprocess again with --model set to config.init_from")
    if meta["loss"] != loss:
        raise DataError(f"{directory} was preprocessed for loss {meta['loss']}, this run's loss.name is {loss}; "
                        f"preprocess again with --loss {loss}")
    if seq_len > meta["seq_len"]:
        raise DataError(f"{directory} holds texts cut to {meta['seq_len']} tokens; train.seq_len={seq_len} would not "
                        "see more of them: lower train.seq_len or preprocess again with a larger --seq-len")
    if tuple(meta.get("prompts", ("", ""))) != tuple(prompts):
        raise DataError(f"{directory} was tokenized with prompts (query, document) {tuple(meta.get('prompts', ('', '')))}"
                        f", this run's data.query_prompt/document_prompt are {tuple(prompts)}; preprocess again "
                        "with --query-prompt/--document-prompt")
    columns = range(len(meta["columns"]))
    ids = [np.load(os.path.join(directory, f"column-{i}.ids.npy"), mmap_mode="r") for i in columns]
    offsets = [np.load(os.path.join(directory, f"column-{i}.offsets.npy")) for i in columns]
    vectors = None
    if os.path.isfile(os.path.join(directory, "vectors.npy")):  # mse's vectors, the score losses' scores
        vectors = np.load(os.path.join(directory, "vectors.npy"), mmap_mode="r")
        if loss == "mse" and vectors.shape[1] != vector_dim:
            raise DataError(f"{directory}: column {meta['label_column']!r} holds {vectors.shape[1]}-number vectors, "
                            f"but the model's embeddings have {vector_dim}")
    return TokenizedColumns(meta["columns"], ids, offsets, vectors)
