"""NeoBERT checkpoints <-> our NeoBertForMaskedLM: the state-dict mapping and HF dirs.

A NeoBERT checkpoint comes in two key layouts: the release's packed `ffn.w12.weight` (rows
[0, F) are w1, the SiLU branch) and the pszemraj fork's separate `ffn.w1.weight`/`ffn.w2.weight`;
both are read, and either is written. Besides the rename and the transpose of Linear weights,
`qkv` is rearranged (model/neobert.py says why): the checkpoint's rows are per head [q_h; k_h; v_h]
with interleaved RoPE pairs, ours are [q; k; v] with each head's q and k dims as (even, odd). The
rearrangement is a permutation, so a round trip returns the same bits.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from neobert_jax.fileio import atomic_dir
from neobert_jax.hf.io import copy_tokenizer_files, read_hf_state_dict
from neobert_jax.hf.weights import ConversionError
from neobert_jax.model.neobert import NeoBertForMaskedLM
from neobert_jax.neobert_config import NeoBertConfig

LAYOUTS = ("w12", "w1w2")
# Checkpoint tensors that are not parameters: RoPE tables some exports keep as buffers.
_IGNORABLE_SUFFIXES = ("freqs_cis", "inv_freq")
_EMBEDDING = "model.encoder.weight"
# The remote code an export carries, and the transformers Auto classes its config.json maps onto it.
REMOTE_CODE = "modeling_neobert.py"
AUTO_MAP = {"AutoConfig": "NeoBERTConfig", "AutoModel": "NeoBERT", "AutoModelForMaskedLM": "NeoBERTLMHead"}
# A classifier export's Auto class, by its architecture (the classes in neobert_modeling.py).
CLASSIFIER_AUTO = {"NeoBERTForSequenceClassification": "AutoModelForSequenceClassification",
                   "NeoBERTForTokenClassification": "AutoModelForTokenClassification"}
_MODELING_SOURCE = os.path.join(os.path.dirname(__file__), "neobert_modeling.py")


def _hf_name(path: tuple) -> tuple[str, bool]:
    """Our parameter path -> (checkpoint key, whether the array is transposed). A sequence classifier's
    `head.dense` is the release's top-level `dense` (its NeoBERTForSequenceClassification's name)."""
    *parents, leaf = (str(p) for p in path)
    if parents == ["head", "dense"]:
        parents = ["dense"]
    if leaf == "kernel":
        return ".".join(parents + ["weight"]), True
    if leaf in ("scale", "encoder"):
        return ".".join(parents + (["weight"] if leaf == "scale" else ["encoder", "weight"])), False
    if leaf in ("weight", "bias"):
        return ".".join(parents + [leaf]), False
    raise ConversionError(f"no NeoBERT name for parameter {'/'.join(path)}")


def _rope_order(head_dim: int) -> np.ndarray:
    """Our dim j of a head is the checkpoint's dim order[j]: pair (2i, 2i+1) becomes (i, i + H/2)."""
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def qkv_to_ours(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Checkpoint qkv (3D, D), per head [q_h; k_h; v_h] -> our rows [q; k; v], q and k dims RoPE-permuted."""
    d = weight.shape[1]
    per_head = weight.reshape(num_heads, 3, -1, d)  # (N, q/k/v, H, D)
    order = _rope_order(per_head.shape[2])
    per_head = np.concatenate([per_head[:, :2][:, :, order], per_head[:, 2:]], axis=1)
    return per_head.transpose(1, 0, 2, 3).reshape(3 * d, d)


def qkv_from_ours(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """The inverse of `qkv_to_ours`."""
    d = rows.shape[1]
    per_head = rows.reshape(3, num_heads, -1, d).transpose(1, 0, 2, 3)
    inverse = np.argsort(_rope_order(per_head.shape[2]))
    per_head = np.concatenate([per_head[:, :2][:, :, inverse], per_head[:, 2:]], axis=1)
    return per_head.reshape(3 * d, d)


def _flat_params(model: nnx.Module) -> dict[tuple, nnx.Variable]:
    return {tuple(path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def neobert_state_dict_from_model(model: NeoBertForMaskedLM, layout: str = "w12") -> dict[str, np.ndarray]:
    """The checkpoint's state dict (float32 numpy, torch layout); a tied decoder's weight is the embedding's.

    layout: "w12" (the release's packed FFN input) or "w1w2" (the fork's separate w1, w2).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}; expected one of {LAYOUTS}")
    heads = model.config.num_attention_heads
    out = {}
    for path, var in _flat_params(model).items():
        name, transposed = _hf_name(path)
        value = np.asarray(var[...], dtype=np.float32)
        value = np.ascontiguousarray(value.T) if transposed else value
        if name.endswith(".qkv.weight"):
            value = qkv_from_ours(value, heads)
        if name.endswith(".ffn.w12.weight") and layout == "w1w2":
            w1, w2 = np.split(value, 2, axis=0)
            out[name[:-len("w12.weight")] + "w1.weight"] = np.ascontiguousarray(w1)
            out[name[:-len("w12.weight")] + "w2.weight"] = np.ascontiguousarray(w2)
            continue
        out[name] = value
    if model.config.tie_word_embeddings and isinstance(model, NeoBertForMaskedLM):  # classifiers have no decoder
        out["decoder.weight"] = out[_EMBEDDING].copy()
    return out


def normalized_state_dict(state_dict: dict) -> dict[str, np.ndarray]:
    """`model.`-prefixed keys (a bare NeoBERT's get the prefix) with w1/w2 packed into w12."""
    bare = not any(k.startswith("model.") for k in state_dict)
    lookup = {("model." + k if bare and not k.startswith("decoder.") else k): np.asarray(v)
              for k, v in state_dict.items()}
    for key in [k for k in lookup if k.endswith(".ffn.w1.weight")]:
        prefix = key[:-len("w1.weight")]
        if prefix + "w2.weight" in lookup:
            lookup[prefix + "w12.weight"] = np.concatenate([lookup.pop(key), lookup.pop(prefix + "w2.weight")])
    return lookup


def load_neobert_state_dict(model: NeoBertForMaskedLM, state_dict: dict, source: str = "checkpoint"):
    """Copies a NeoBERT checkpoint's tensors (either layout) into `model` in place.

    Returns (newly_initialized, ignored): our tensors the checkpoint lacked (they keep their init)
    and checkpoint tensors with no place here. A tied model checks the decoder weight against the embedding.
    """
    lookup = normalized_state_dict(state_dict)
    heads = model.config.num_attention_heads
    used, newly_initialized = set(), []
    for path, var in _flat_params(model).items():
        name, transposed = _hf_name(path)
        if name not in lookup:
            newly_initialized.append(name)
            continue
        value = lookup[name]
        shape = var.get_value().shape  # also on an abstract (eval_shape) model
        expected = shape[::-1] if transposed else shape
        if value.shape != expected:
            raise ConversionError(f"{source}: tensor {name} has shape {value.shape}, the model expects {expected}")
        if name.endswith(".qkv.weight"):
            value = qkv_to_ours(value, heads)
        var.set_value(jnp.asarray(value.T if transposed else value, dtype=jnp.float32))
        used.add(name)
    if model.config.tie_word_embeddings and "decoder.weight" in lookup:
        used.add("decoder.weight")
        embedding = lookup.get(_EMBEDDING)
        if embedding is not None and not np.array_equal(lookup["decoder.weight"], embedding):
            raise ConversionError(f"{source}: decoder.weight differs from the token embedding, but the config "
                                  "ties them (tie_word_embeddings)")
    ignored = sorted(k for k in lookup if k not in used and not k.endswith(_IGNORABLE_SUFFIXES))
    return newly_initialized, ignored


def load_neobert_dir(path: str, seed: int = 0, **runtime) -> tuple[NeoBertForMaskedLM, list[str]]:
    """A NeoBERT HF dir (config.json + safetensors or .bin, either key layout) -> (model, newly initialized names).

    runtime: NeoBertConfig runtime fields (dtype, attn_implementation, remat ...).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory")
    config = NeoBertConfig.from_json_file(os.path.join(path, "config.json"), **runtime)
    state_dict = read_hf_state_dict(path)
    # Shapes first: when the dir has every tensor, a random init would only be overwritten.
    model = nnx.eval_shape(lambda: NeoBertForMaskedLM(config, rngs=nnx.Rngs(seed)))
    newly_initialized, _ = load_neobert_state_dict(model, state_dict, source=path)
    if newly_initialized:  # e.g. a bare encoder: the decoder starts fresh
        model = NeoBertForMaskedLM(config, rngs=nnx.Rngs(seed))
        newly_initialized, _ = load_neobert_state_dict(model, state_dict, source=path)
    return model, newly_initialized


def save_neobert_dir(model: NeoBertForMaskedLM, out_dir: str, *, layout: str = "w12",
                     tokenizer_dir: str | None = None, overwrite: bool = False) -> None:
    """An HF dir in the release's format: config.json (its field names) + model.safetensors + tokenizer files,
    and our torch `modeling_neobert.py` as remote code (hf/neobert_modeling.py), which config.json's auto_map names."""
    import json
    import shutil

    from safetensors.numpy import save_file

    state_dict = neobert_state_dict_from_model(model, layout)
    config = _remote_code_config(model.config, AUTO_MAP)
    with atomic_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        shutil.copyfile(_MODELING_SOURCE, os.path.join(tmp, REMOTE_CODE))
        # "pt" metadata: transformers then reads the file as torch weights.
        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()},
                  os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        copy_tokenizer_files(tokenizer_dir, tmp)


def _remote_code_config(config: NeoBertConfig, auto_map: dict) -> dict:
    d = config.to_hf_dict()
    d["auto_map"] = {auto: f"{REMOTE_CODE[:-3]}.{name}" for auto, name in auto_map.items()}
    return d


def neobert_classifier_config(config: NeoBertConfig, architecture: str) -> tuple[dict, dict]:
    """A classifier export's (config.json, {REMOTE_CODE: its source}): auto_map names the remote code's
    `architecture` for its Auto class, and no MLM class (the export has no decoder)."""
    auto_map = {k: v for k, v in AUTO_MAP.items() if k != "AutoModelForMaskedLM"}
    d = _remote_code_config(config, {**auto_map, CLASSIFIER_AUTO[architecture]: architecture})
    d["architectures"] = [architecture]
    return d, {REMOTE_CODE: _MODELING_SOURCE}


def neobert_encoder_export(model: NeoBertForMaskedLM) -> tuple[dict, dict, dict]:
    """The bare encoder as a sentence-transformers folder holds it (hf/sentence_transformers.py):
    (state dict without `model.`, config.json naming the `NeoBERT` class, {REMOTE_CODE: its source})."""
    encoder = {k[len("model."):]: v for k, v in neobert_state_dict_from_model(model).items() if k.startswith("model.")}
    config = _remote_code_config(model.config, {k: v for k, v in AUTO_MAP.items() if k != "AutoModelForMaskedLM"})
    config["architectures"] = ["NeoBERT"]
    return encoder, config, {REMOTE_CODE: _MODELING_SOURCE}
