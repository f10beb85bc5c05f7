"""Flax NNX ModernBERT and its attention backends."""

from neobert_jax.model.attention import attention, backends
from neobert_jax.model.modernbert import ModernBertForMaskedLM, ModernBertModel, logical_axes

__all__ = ["ModernBertForMaskedLM", "ModernBertModel", "attention", "backends", "logical_axes"]
