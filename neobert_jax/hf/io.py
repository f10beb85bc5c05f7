"""Reading and writing transformers model directories (config.json + weights + tokenizer)."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

from neobert_jax.config import ModernBertConfig
from neobert_jax.fileio import atomic_dir

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json",
)
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def read_hf_config(model_dir: str, **runtime) -> ModernBertConfig:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such directory")
    return ModernBertConfig.from_json_file(path, **runtime)


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        out = {}
        with safe_open(path, framework="flax") as f:  # the flax loader understands bfloat16
            for key in f.keys():
                out[key] = np.asarray(f.get_tensor(key))
        return out
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def _load_torch_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path}: reading .bin checkpoints needs torch (pip install torch)") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt pickles / zips
        reason = f"{type(e).__name__}: {e}"
        if "Weights only load failed" in reason:  # its text suggests weights_only=False: never for others' files
            unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", reason)
            if unsupported:
                raise ValueError(f"{path}: a pickle holding Python objects besides tensors ({unsupported.group(1)}), "
                                 "not loaded since that could run code; convert it to model.safetensors where it was "
                                 "made (transformers' save_pretrained, or safetensors.torch.save_file)") from None
            reason = " ".join(re.findall(r"WeightsUnpickler error:\s*(.*?)\n\n", reason, re.S)) or "refused by torch's weights-only loader"
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def _load_file(path: str) -> dict[str, np.ndarray]:
    return _load_safetensors(path) if path.endswith(".safetensors") else _load_torch_bin(path)


def read_hf_state_dict(model_dir: str) -> dict[str, np.ndarray]:
    """All tensors of an HF dir: single or sharded, safetensors preferred over .bin."""
    for name in _WEIGHT_FILES:
        path = os.path.join(model_dir, name)
        if not os.path.exists(path):
            continue
        if not name.endswith(".index.json"):
            return _load_file(path)
        try:
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{path}: not a valid weight index ({e})") from None
        state = {}
        for shard in shards:
            shard_path = os.path.join(model_dir, shard)
            if not os.path.exists(shard_path):
                raise FileNotFoundError(f"{shard_path}: listed in {name} but missing")
            state.update(_load_file(shard_path))
        return state
    raise FileNotFoundError(f"{model_dir}: no weights file (expected one of {', '.join(_WEIGHT_FILES)})")


def copy_tokenizer_files(src_dir: str | None, dst_dir: str) -> list[str]:
    if not src_dir:
        return []
    copied = []
    for name in TOKENIZER_FILES:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(dst_dir, name))
            copied.append(name)
    return copied


def write_hf_dir(state_dict: dict[str, np.ndarray], config: ModernBertConfig, out_dir: str, *,
                 tokenizer_dir: str | None = None, overwrite: bool = False) -> None:
    """A dir that `AutoModelForMaskedLM.from_pretrained` loads with any transformers version."""
    from safetensors.numpy import save_file

    with atomic_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        config.save_json(os.path.join(tmp, "config.json"))
        # "pt" metadata: "flax" would make transformers 4.x attempt a Flax conversion.
        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()},
                  os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        copy_tokenizer_files(tokenizer_dir, tmp)
