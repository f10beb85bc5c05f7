"""Tokenizers: load an HF tokenizer folder, or train a ModernBERT-style byte-level BPE on the corpus.

A trained tokenizer is cached in `output_dir/tokenizer` with a note of the corpus it came from, so
a rerun reuses it and a run on other data refuses to silently reuse a tokenizer that does not fit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Sequence

import numpy as np

from neobert_jax.data import sources
from neobert_jax.fileio import atomic_dir
from neobert_jax.data.errors import DataError

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")  # ModernBERT's order; ids 0..4 here
DEFAULT_VOCAB_SIZE = 32768
MODEL_MAX_LENGTH = 8192  # ModernBERT's max_position_embeddings
_REQUIRED_SPECIALS = ("cls", "sep", "pad", "mask")
_CORPUS_NOTE = "trained_on.json"
TRAINING_CHUNK_CHARS = 2048


def get_tokenizer(
    tokenizer_path: str | None,
    train_files: str | Sequence[str] | None,
    output_dir: str,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    *,
    text_field: str = "text",
    skip_bad_records: bool = False,
):
    """The run's tokenizer, a transformers `PreTrainedTokenizerFast`.

    With `tokenizer_path` (an HF tokenizer folder, or a folder written by scripts/preprocess.py) it is
    loaded locally. Without, one is trained on `train_files` (empty: the built-in corpus) and cached
    in `output_dir/tokenizer`; a rerun on the same corpus loads the cached one.
    """
    if tokenizer_path:
        return load_tokenizer_or_bundle(tokenizer_path)
    tokenizer, note, cached = cached_or_trained(train_files, output_dir, vocab_size, text_field=text_field,
                                                skip_bad_records=skip_bad_records)
    if cached:
        return tokenizer
    cache_dir = os.path.join(output_dir, "tokenizer")
    save_tokenizer(tokenizer, cache_dir, note)
    return _load_cached(cache_dir, note)  # another process may have won the race to write it


def load_tokenizer_or_bundle(path: str):
    """An HF tokenizer folder, or a folder holding one under `tokenizer/` (preprocessed shards, run dirs)."""
    bundled = os.path.join(path, "tokenizer")
    return load_tokenizer(bundled if os.path.isdir(bundled) else path)


def cached_or_trained(train_files, output_dir: str, vocab_size: int, *, text_field: str = "text",
                      skip_bad_records: bool = False) -> tuple[object, dict, bool]:
    """-> (tokenizer, corpus note, whether it came from output_dir/tokenizer). Writes nothing, so a
    run can validate everything else before its output dir gets a tokenizer."""
    check_vocab_size(vocab_size)
    files = sources.resolve_files(train_files)
    note = {"corpus": sources.describe_files(files), "vocab_size": vocab_size, "text_field": text_field}
    cache_dir = os.path.join(output_dir, "tokenizer")
    if os.path.isdir(cache_dir):
        return _load_cached(cache_dir, note), note, True
    tokenizer = train_tokenizer(files, vocab_size=vocab_size, text_field=text_field, skip_bad_records=skip_bad_records)
    return tokenizer, note, False


def _load_cached(cache_dir: str, note: dict):
    try:
        with open(os.path.join(cache_dir, _CORPUS_NOTE)) as f:
            cached_note = json.load(f)
    except (OSError, json.JSONDecodeError):
        cached_note = None
    if cached_note != note:
        raise DataError(
            f"{cache_dir} holds a tokenizer trained on other data or settings; "
            "delete it to train a new one, or pass it explicitly as the tokenizer path to keep it"
        )
    return load_tokenizer(cache_dir)


def load_tokenizer(path: str):
    """Loads an HF tokenizer folder from disk only, and checks it has the MLM special tokens.

    A folder whose tokenizer_config.json names the plain fast class (this project's, ModernBERT's)
    is loaded by that class: AutoTokenizer would first import transformers' model registry to
    read a config.json beside it, a large share of a run's start-up (docs/recipe.md).
    """
    if not os.path.isdir(path):
        raise DataError(f"tokenizer {path}: no such folder (only local tokenizers are loaded; download hub ones first)")
    if _tokenizer_class(path) in _PLAIN_FAST_CLASSES:
        from transformers import PreTrainedTokenizerFast as loader
    else:
        from transformers import AutoTokenizer as loader
    try:
        tokenizer = loader.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many types, e.g. for a config.json beside it with bad values
        raise DataError(f"tokenizer {path}: cannot be loaded ({type(e).__name__}: {e})") from None
    if not tokenizer.is_fast:
        raise DataError(f"tokenizer {path}: no fast (Rust `tokenizers`) version; save it with tokenizer.json")
    if missing := missing_special_tokens(tokenizer):
        raise DataError(f"tokenizer {path}: no {'/'.join(missing)} token; MLM needs cls, sep, pad and mask tokens")
    return tokenizer


_PLAIN_FAST_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _tokenizer_class(path: str) -> str | None:
    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            return json.load(f).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):  # AutoTokenizer then names what is wrong
        return None


def missing_special_tokens(tokenizer) -> list[str]:
    return [name for name in _REQUIRED_SPECIALS if getattr(tokenizer, f"{name}_token_id", None) is None]


def check_vocab_size(vocab_size) -> None:
    smallest = 256 + len(SPECIAL_TOKENS) + 1  # the byte alphabet, the specials, one merge
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        raise DataError(f"tokenizer vocab_size={vocab_size!r}: must be an integer >= {smallest} "
                        f"(256 byte tokens, {len(SPECIAL_TOKENS)} special tokens, at least one merge)")


def _bounded(documents, limit: int = TRAINING_CHUNK_CHARS):
    """Documents cut into pieces of at most `limit` characters, at a space where there is one.

    BPE training time grows with the square of a word's length: one 20 MB line without spaces
    took minutes. Pieces of ordinary text keep their words whole.
    """
    for text in documents:
        while len(text) > limit:
            cut = text.rfind(" ", limit // 2, limit) + 1 or limit
            yield text[:cut]
            text = text[cut:]
        yield text


def train_tokenizer(
    files: Sequence[str],
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    text_field: str = "text",
    skip_bad_records: bool = False,
):
    """Byte-level BPE like ModernBERT's: no unknown bytes, [CLS] text [SEP], no token_type_ids."""
    check_vocab_size(vocab_size)
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    stats = sources.ReadStats()
    documents = sources.read_documents(files, text_field=text_field, skip_bad_records=skip_bad_records, stats=stats)
    backend.train_from_iterator(_bounded(documents), trainer=trainer)
    if stats.documents == 0:
        raise DataError(f"no documents to train a tokenizer on in {', '.join(files)} ({stats.empty_skipped} empty)")
    backend.add_special_tokens([AddedToken("[MASK]", lstrip=True, special=True, normalized=False)])  # as ModernBERT
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return wrap_backend(backend)


def wrap_backend(backend):
    """The transformers tokenizer around a trained `tokenizers.Tokenizer` (also one sent as JSON
    from process 0, so other hosts need not train it too)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if isinstance(backend, str):
        backend = Tokenizer.from_str(backend)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=MODEL_MAX_LENGTH,
        model_input_names=["input_ids", "attention_mask"],
    )


def save_tokenizer(tokenizer, out_dir: str, note: dict | None = None, replace: bool = False) -> None:
    """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json, atomically.

    The config names the class `PreTrainedTokenizerFast`, which transformers 4.x and 5.x both load
    (5.x would write its own `TokenizersBackend`, unknown to 4.x). An existing folder is kept
    unless `replace`.
    """
    special_tokens = dict(tokenizer.special_tokens_map)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens,
        "model_max_length": tokenizer.model_max_length,
        "model_input_names": list(tokenizer.model_input_names),
    }
    with atomic_dir(out_dir, if_exists="replace" if replace else "keep") as tmp_dir:
        tokenizer.backend_tokenizer.save(os.path.join(tmp_dir, "tokenizer.json"))
        files = {"tokenizer_config.json": config, "special_tokens_map.json": special_tokens, _CORPUS_NOTE: note}
        for name, content in files.items():
            if content is not None:
                with open(os.path.join(tmp_dir, name), "w") as f:
                    json.dump(content, f, indent=2, default=str)


def special_ids(tokenizer) -> np.ndarray:
    """Ids that masking must never pick or insert (every special/added-special token)."""
    return np.unique(np.asarray(tokenizer.all_special_ids, dtype=np.int64))


def _token_dtype(tokenizer) -> np.dtype:
    """The narrowest unsigned dtype holding every id (halves memory and disk), little-endian on disk."""
    return np.dtype("<u2") if len(tokenizer) <= 1 << 16 else np.dtype("<u4")


def vocab_fingerprint(tokenizer) -> dict:
    """Tells whether shards were tokenized like this tokenizer would: same text -> ids mapping.

    Only the parts that map plain text to ids are hashed (normalizer, pre-tokenizer, model), not the
    padding/truncation/post-processing settings a loader may change.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    text_to_ids = json.dumps({part: spec.get(part) for part in ("normalizer", "pre_tokenizer", "model")}, sort_keys=True)
    return {
        "size": len(tokenizer),
        "special_ids": {name: getattr(tokenizer, f"{name}_token_id") for name in _REQUIRED_SPECIALS},
        "text_to_ids_hash": hashlib.sha256(text_to_ids.encode()).hexdigest()[:16],
    }


class TextEncoder:
    """Fast batch encoding of plain text to ids (no specials, no truncation, no padding).

    Uses a private copy of the Rust tokenizer so the caller's tokenizer settings stay untouched.
    """

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer

        self._backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self.dtype = _token_dtype(tokenizer)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids_N concatenated, lengths per text)."""
        ids_per_text = [e.ids for e in self._backend.encode_batch_fast(list(texts), add_special_tokens=False)]
        lengths = np.fromiter(map(len, ids_per_text), dtype=np.int64, count=len(ids_per_text))
        ids = np.fromiter(itertools.chain.from_iterable(ids_per_text), dtype=self.dtype, count=int(lengths.sum()))
        return ids, lengths
