"""Tokenizers: load an HF tokenizer folder, or train a ModernBERT-style byte-level BPE on the corpus.

Runs hold a `RunTokenizer` (the Rust tokenizer and its named special tokens), not transformers'
object: importing transformers was seconds of a GPU run's start-up (docs/recipe.md).

A trained tokenizer is cached in `output_dir/tokenizer` with a note of the corpus it came from, so
a rerun reuses it and a run on other data refuses to silently reuse a tokenizer that does not fit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
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
    """The run's tokenizer, a `RunTokenizer`.

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


def load_tokenizer(path: str) -> "RunTokenizer":
    """Loads an HF tokenizer folder from disk only, and checks it has the MLM special tokens.

    A folder with a tokenizer.json whose tokenizer_config.json names the plain fast class (this
    project's, ModernBERT's) is read with `tokenizers` alone; others go through AutoTokenizer.
    """
    if not os.path.isdir(path):
        raise DataError(f"tokenizer {path}: no such folder (only local tokenizers are loaded; download hub ones first)")
    tokenizer = _read_plain_folder(path) or _load_with_transformers(path)
    if missing := missing_special_tokens(tokenizer):
        raise DataError(f"tokenizer {path}: no {'/'.join(missing)} token; MLM needs cls, sep, pad and mask tokens")
    return tokenizer


def _load_with_transformers(path: str) -> "RunTokenizer":
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many types, e.g. for a config.json beside it with bad values
        raise DataError(f"tokenizer {path}: cannot be loaded ({type(e).__name__}: {e})") from None
    if not tokenizer.is_fast:
        raise DataError(f"tokenizer {path}: no fast (Rust `tokenizers`) version; save it with tokenizer.json")
    return RunTokenizer.from_transformers(tokenizer)


_PLAIN_FAST_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")
_NAMED_SPECIALS = ("unk", "cls", "sep", "pad", "mask", "bos", "eos")
_LIST_SPECIALS = ("additional_special_tokens", "extra_special_tokens")  # transformers 4.x, 5.x
_UNLIMITED_LENGTH = int(1e30)  # transformers' VERY_LARGE_INTEGER, its default model_max_length
_DEFAULT_INPUT_NAMES = ("input_ids", "attention_mask")  # transformers 5.x default (4.x added token_type_ids)


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _content(token):
    return token.get("content") if isinstance(token, dict) else token


def _read_plain_folder(path: str) -> "RunTokenizer | None":
    """The folder as transformers' PreTrainedTokenizerFast reads it (special_tokens_map.json over
    tokenizer_config.json), or None where that takes transformers: another class, no tokenizer.json,
    a special token missing from the vocabulary (transformers would add it)."""
    config = _read_json(os.path.join(path, "tokenizer_config.json"))
    tokenizer_json = os.path.join(path, "tokenizer.json")
    if not isinstance(config, dict) or config.get("tokenizer_class") not in _PLAIN_FAST_CLASSES:
        return None
    if not os.path.isfile(tokenizer_json):
        return None
    special_map = _read_json(os.path.join(path, "special_tokens_map.json"))
    merged = {**config, **(special_map if isinstance(special_map, dict) else {})}
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(tokenizer_json)
    except Exception:  # noqa: BLE001 - a malformed file: transformers then names what is wrong
        return None
    specials = {f"{n}_token": _content(merged[f"{n}_token"]) for n in _NAMED_SPECIALS if merged.get(f"{n}_token")}
    extra = []
    for key in _LIST_SPECIALS:
        value = merged.get(key) or []
        extra += [_content(t) for t in (value.values() if isinstance(value, dict) else value)]
    if extra:
        specials["additional_special_tokens"] = list(dict.fromkeys(extra))
    if any(backend.token_to_id(t) is None for t in [*specials.values(), *extra] if isinstance(t, str)):
        return None
    return RunTokenizer(backend, specials, config.get("model_max_length", _UNLIMITED_LENGTH),
                        config.get("model_input_names", _DEFAULT_INPUT_NAMES))


class RunTokenizer:
    """A Rust `tokenizers.Tokenizer` with its named special tokens: the part of transformers'
    PreTrainedTokenizerFast this package reads, under the same attribute names."""

    def __init__(self, backend, special_tokens_map: dict, model_max_length: int, model_input_names):
        self.backend_tokenizer = backend
        self.special_tokens_map = dict(special_tokens_map)  # e.g. {"cls_token": "[CLS]", ...}
        self.model_max_length = int(model_max_length)
        self.model_input_names = list(model_input_names)
        for name in _NAMED_SPECIALS:
            token = self.special_tokens_map.get(f"{name}_token")
            setattr(self, f"{name}_token", token)
            setattr(self, f"{name}_token_id", None if token is None else backend.token_to_id(token))

    @classmethod
    def from_transformers(cls, tokenizer) -> "RunTokenizer":
        from tokenizers import Tokenizer

        specials = {f"{n}_token": str(getattr(tokenizer, f"{n}_token")) for n in _NAMED_SPECIALS
                    if getattr(tokenizer, f"{n}_token", None) is not None}
        if extra := [str(t) for t in tokenizer.all_special_tokens if str(t) not in specials.values()]:
            specials["additional_special_tokens"] = extra
        return cls(Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), specials,
                   tokenizer.model_max_length, tokenizer.model_input_names)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def all_special_ids(self) -> list[int]:
        tokens = [t for k, t in self.special_tokens_map.items() if k.endswith("_token")]
        tokens += self.special_tokens_map.get("additional_special_tokens", [])
        return list(dict.fromkeys(self.backend_tokenizer.token_to_id(t) for t in tokens))

    def to_transformers(self):
        """The same tokenizer as a transformers PreTrainedTokenizerFast (imports transformers)."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=self.backend_tokenizer, model_max_length=self.model_max_length,
                                       model_input_names=self.model_input_names, **self.special_tokens_map)


def missing_special_tokens(tokenizer) -> list[str]:
    return [name for name in _REQUIRED_SPECIALS if getattr(tokenizer, f"{name}_token_id", None) is None]


def check_vocab_size(vocab_size) -> None:
    smallest = 256 + len(SPECIAL_TOKENS) + 1  # the byte alphabet, the specials, one merge
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        raise DataError(f"tokenizer vocab_size={vocab_size!r}: must be an integer >= {smallest} "
                        f"(256 byte tokens, {len(SPECIAL_TOKENS)} special tokens, at least one merge)")


def _bounded(documents, limit: int = TRAINING_CHUNK_CHARS):
    """Documents cut into pieces of at most `limit` characters, at a space where there is one.

    BPE training time grows with the square of a word's length, so one long line without spaces
    would stall it. Pieces of ordinary text keep their words whole.
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


def wrap_backend(backend) -> RunTokenizer:
    """The run tokenizer around a trained `tokenizers.Tokenizer` (also one sent as JSON from
    process 0, so other hosts need not train it too)."""
    from tokenizers import Tokenizer

    if isinstance(backend, str):
        backend = Tokenizer.from_str(backend)
    specials = {f"{name}_token": token for name, token in zip(("unk", "cls", "sep", "pad", "mask"), SPECIAL_TOKENS)}
    return RunTokenizer(backend, specials, MODEL_MAX_LENGTH, ["input_ids", "attention_mask"])


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
        path = os.path.join(tmp_dir, "tokenizer.json")
        try:
            tokenizer.backend_tokenizer.save(path)
        except Exception as e:  # the Rust library's bare Exception("No space left on device (os error 28)")
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), path) from None
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

    def with_specials(self, text: str) -> list[int]:
        """One text's ids with the tokenizer's template (e.g. [CLS] text [SEP]) applied."""
        return self._backend.encode(text).ids

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids_N concatenated, lengths per text)."""
        ids_per_text = [e.ids for e in self._backend.encode_batch_fast(list(texts), add_special_tokens=False)]
        lengths = np.fromiter(map(len, ids_per_text), dtype=np.int64, count=len(ids_per_text))
        ids = np.fromiter(itertools.chain.from_iterable(ids_per_text), dtype=self.dtype, count=int(lengths.sum()))
        return ids, lengths
