"""sentence-transformers model folders: write one around our encoder, read a folder's pooling.

The folder is the bare encoder (`ModernBertModel`, as sentence-transformers saves it; a NeoBERT's
`NeoBERT` with the remote code of its HF export, hf/neobert.py) with its tokenizer at the top level, then `1_Pooling` and, when embeddings are unit vectors,
`2_Normalize`. The module files use the long-standing format (`sentence_transformers.models.*`,
`pooling_mode_*_tokens`), which sentence-transformers 2.x to 6.x all load. The training prompts
become the folder's prompts "query" and "document" (the names `encode_query` / `encode_document`
use); the pooling includes the prompt's tokens (`include_prompt`), as the training's pooling did.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from neobert_jax.fileio import atomic_dir
from neobert_jax.hf.io import copy_tokenizer_files
from neobert_jax.hf.weights import state_dict_from_model

POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
POOLING_MODES = ("mean", "cls")
_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}
PROMPT_NAMES = ("query", "document")
_DOCUMENT_ALIASES = ("document", "passage", "corpus")  # what sentence-transformers' encode_document looks for
_ALL_POOLING_KEYS = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                     "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _write_json(path: str, content) -> None:
    with open(path, "w") as f:
        json.dump(content, f, indent=2)


def _encoder_export(model) -> tuple[dict, dict, dict]:
    """(encoder state dict without the `model.` prefix, its config.json, {file name: source} to copy beside it)."""
    from neobert_jax.neobert_config import NeoBertConfig

    if isinstance(model.config, NeoBertConfig):
        from neobert_jax.hf.neobert import neobert_encoder_export

        return neobert_encoder_export(model)
    encoder = {k.removeprefix("model."): np.ascontiguousarray(v)
               for k, v in state_dict_from_model(model).items() if k.startswith("model.")}
    config = model.config.to_hf_dict()
    config["architectures"] = ["ModernBertModel"]
    return encoder, config, {}


def save_sentence_transformers_dir(model, out_dir: str, *, tokenizer_dir: str | None, pooling: str = "mean",
                                   normalize: bool = True, max_seq_length: int = 512,
                                   prompts: tuple[str, str] = ("", ""), overwrite: bool = False) -> None:
    """`SentenceTransformer(out_dir).encode(texts)` then gives this model's pooled embeddings, and
    `encode(texts, prompt_name="query")` those of query_prompt + text (`prompts`: query, document)."""
    from safetensors.numpy import save_file

    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    encoder, config, files = _encoder_export(model)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": "sentence_transformers.models.Normalize"})
    pooling_config = {"word_embedding_dimension": model.config.hidden_size,
                      **{key: key == _POOLING_KEYS[pooling] for key in _ALL_POOLING_KEYS}, "include_prompt": True}
    with atomic_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        _write_json(os.path.join(tmp, "config.json"), config)
        save_file(encoder, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        copy_tokenizer_files(tokenizer_dir, tmp)
        for name, source in files.items():
            shutil.copyfile(source, os.path.join(tmp, name))
        _write_json(os.path.join(tmp, "modules.json"), modules)
        _write_json(os.path.join(tmp, "sentence_bert_config.json"), {"max_seq_length": max_seq_length,
                                                                     "do_lower_case": False})
        _write_json(os.path.join(tmp, "config_sentence_transformers.json"),
                    {"prompts": {name: p for name, p in zip(PROMPT_NAMES, prompts) if p},
                     "default_prompt_name": None, "similarity_fn_name": "cosine"})
        os.makedirs(os.path.join(tmp, POOLING_DIR))
        _write_json(os.path.join(tmp, POOLING_DIR, "config.json"), pooling_config)
        if normalize:
            os.makedirs(os.path.join(tmp, NORMALIZE_DIR))


def read_sentence_transformers_pooling(model_dir: str) -> dict | None:
    """{"pooling", "normalize", "max_seq_length"} of a sentence-transformers folder whose modules are
    Transformer at "", Pooling (mean or cls) and optionally Normalize; None when there is no
    modules.json. Raises ValueError for module stacks this project's encoder cannot reproduce."""
    path = os.path.join(model_dir, "modules.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        modules = json.load(f)
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or modules[0]["path"] != "" or kinds[2:] not in ([], ["Normalize"]):
        raise ValueError(f"{path}: modules {kinds} are not Transformer, Pooling[, Normalize]")
    with open(os.path.join(model_dir, modules[1]["path"], "config.json")) as f:
        pooling_config = json.load(f)
    mode = pooling_config.get("pooling_mode")  # sentence-transformers >= 6 writes the mode by name
    if mode is None:
        chosen = [m for m, key in _POOLING_KEYS.items() if pooling_config.get(key)]
        others = [k for k in _ALL_POOLING_KEYS if pooling_config.get(k) and k not in _POOLING_KEYS.values()]
        mode = chosen[0] if len(chosen) == 1 and not others else None
    if mode not in POOLING_MODES:
        raise ValueError(f"{model_dir}: pooling {pooling_config} is not mean or cls pooling")
    max_seq_length = None
    bert_config = os.path.join(model_dir, "sentence_bert_config.json")
    if os.path.isfile(bert_config):
        with open(bert_config) as f:
            max_seq_length = json.load(f).get("max_seq_length")
    return {"pooling": mode, "normalize": kinds[2:] == ["Normalize"], "max_seq_length": max_seq_length}


def read_sentence_transformers_prompts(model_dir: str) -> tuple[str, str]:
    """(query prompt, document prompt) of a sentence-transformers folder; "" where it has none."""
    path = os.path.join(model_dir, "config_sentence_transformers.json")
    if not os.path.isfile(path):
        return "", ""
    with open(path) as f:
        found = json.load(f).get("prompts") or {}
    document = next((found[name] for name in _DOCUMENT_ALIASES if name in found), "")
    return found.get("query", ""), document
