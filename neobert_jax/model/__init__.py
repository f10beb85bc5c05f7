"""Flax NNX ModernBERT and NeoBERT, and their attention backends."""

from neobert_jax.model.attention import attention, backends
from neobert_jax.model.modernbert import ModernBertForMaskedLM, ModernBertModel, logical_axes
from neobert_jax.model.neobert import NeoBertForMaskedLM, NeoBertModel

__all__ = ["ModernBertForMaskedLM", "ModernBertModel", "NeoBertForMaskedLM", "NeoBertModel", "attention", "backends",
           "logical_axes"]
