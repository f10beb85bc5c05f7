"""Sentence embeddings from token states: mean or [CLS] pooling per segment, L2 normalization.

Pooling works per row and segment, so a packed row of several texts yields one embedding per
text with no cross-row traffic; `gather_texts` then puts them in step-text order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST  # pooling is a weighted sum, not a place for bf16/TF32 rounding


def pool_rows(hidden_RTD, segment_ids_RT, positions_RT, slots: int, mode: str):
    """(R, slots, D) float32: mean of the tokens of segment s + 1 (mode "mean", [CLS] and [SEP]
    included, as sentence-transformers does) or its first token (mode "cls"); 0 for empty slots."""
    member_RTS = segment_ids_RT[..., None] == jnp.arange(1, slots + 1, dtype=segment_ids_RT.dtype)
    if mode == "cls":
        member_RTS &= (positions_RT == 0)[..., None]
    weight_RTS = member_RTS.astype(jnp.float32)
    sums_RSD = jnp.einsum("rts,rtd->rsd", weight_RTS, hidden_RTD.astype(jnp.float32), precision=_HIGHEST)
    counts_RS1 = jnp.sum(weight_RTS, axis=1)[..., None]
    return sums_RSD / jnp.maximum(counts_RS1, 1.0)


def gather_texts(pooled_groups: list, text_slot_N):
    """(N, D): the pooled slot of every text of the step, from each group's (R, slots, D)."""
    flat = jnp.concatenate([p.reshape(-1, p.shape[-1]) for p in pooled_groups], axis=0)
    return jnp.take(flat, text_slot_N, axis=0)


def l2_normalize(x, eps: float = 1e-12):
    """x / max(||x||, eps), torch.nn.functional.normalize's definition."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)
