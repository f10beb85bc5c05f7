"""Conversion between transformers ModernBERT dirs, NeoBERT dirs (hf/neobert.py) and this project's checkpoints."""

from neobert_jax.hf.checkpoint import (
    Pretrained,
    from_pretrained,
    load_pretrained,
    read_model_config,
    restore_params,
    save_checkpoint_dir,
    save_hf_dir,
)
from neobert_jax.hf.paths import ModelFiles, locate
from neobert_jax.hf.neobert import (
    load_neobert_dir,
    load_neobert_state_dict,
    neobert_state_dict_from_model,
    save_neobert_dir,
)
from neobert_jax.hf.io import read_hf_config, read_hf_state_dict, write_hf_dir
from neobert_jax.hf.weights import ConversionError, load_state_dict_into_model, state_dict_from_model

__all__ = [
    "ConversionError", "ModelFiles", "Pretrained", "from_pretrained", "locate", "load_pretrained",
    "load_neobert_dir", "load_neobert_state_dict", "load_state_dict_into_model", "neobert_state_dict_from_model",
    "read_hf_config", "read_hf_state_dict", "read_model_config", "restore_params",
    "save_checkpoint_dir", "save_hf_dir", "save_neobert_dir", "state_dict_from_model", "write_hf_dir",
]
