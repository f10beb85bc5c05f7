"""neobert_jax: train small ModernBERT encoders in JAX/Flax with lossless HF conversion."""

from neobert_jax.config import ModernBertConfig


def from_pretrained(path: str, **runtime):
    """Loads an HF dir or a project checkpoint; `model(input_ids, attention_mask)` -> logits."""
    from neobert_jax.hf import from_pretrained as _from_pretrained

    return _from_pretrained(path, **runtime)


__all__ = ["ModernBertConfig", "from_pretrained"]
