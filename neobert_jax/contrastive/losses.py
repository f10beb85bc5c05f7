"""Contrastive objectives over the embeddings of a whole (global) batch.

`emb_CBD` holds column k of example b at [k, b]: anchors, positives, then each hard-negative
column. Under jit on a mesh these arrays are global, so every anchor is scored against the
positives and negatives of all devices (XLA gathers the candidates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from neobert_jax.contrastive.pooling import l2_normalize

_HIGHEST = jax.lax.Precision.HIGHEST


def cosine_matrix(a_BD, b_KD):
    """(B, K) cosine similarities."""
    return jnp.einsum("bd,kd->bk", l2_normalize(a_BD), l2_normalize(b_KD), precision=_HIGHEST)


def _cross_entropy_diagonal(logits_BK):
    """Mean cross-entropy where example b's target is candidate b."""
    labels_B = jnp.arange(logits_BK.shape[0])
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits_BK, labels_B))


def ranking_loss(emb_CBD, scale: float, symmetric: bool):
    """InfoNCE / MultipleNegativesRanking: each anchor must pick its positive among all positives
    and all hard negatives of the batch. symmetric: averaged with each positive picking its
    anchor among all anchors."""
    C, B, D = emb_CBD.shape
    anchor_BD, candidates_KD = emb_CBD[0], emb_CBD[1:].reshape((C - 1) * B, D)
    loss = _cross_entropy_diagonal(scale * cosine_matrix(anchor_BD, candidates_KD))
    if symmetric:
        loss = (loss + _cross_entropy_diagonal(scale * cosine_matrix(emb_CBD[1], anchor_BD))) / 2
    return loss


def mse_loss(emb_BD, target_BD):
    """Mean squared error over all elements (torch MSELoss), the student against teacher vectors."""
    return jnp.mean(jnp.square(emb_BD - target_BD))


def make_objective(loss_cfg, *, columns: int, normalize: bool, dims: list[int], weights: list[float]):
    """(emb_ND in step-text order, targets_BD or None) -> scalar loss.

    Embeddings are L2-normalized first when the exported model normalizes (so MSE compares what
    users will get). Matryoshka: the loss is the weighted sum over the leading `dims` of each
    embedding; ranking losses renormalize each prefix through the cosine, MSE cuts the targets too.
    """
    name, scale, symmetric = loss_cfg.name, float(loss_cfg.scale), bool(loss_cfg.symmetric)

    def objective(emb_ND, targets_BD=None):
        emb_CBD = emb_ND.reshape(columns, emb_ND.shape[0] // columns, emb_ND.shape[-1])
        if normalize:
            emb_CBD = l2_normalize(emb_CBD)
        total = 0.0
        for dim, weight in zip(dims or [emb_ND.shape[-1]], weights or [1.0]):
            if name == "mse":
                total += weight * mse_loss(emb_CBD[0, :, :dim], targets_BD[:, :dim])
            else:
                total += weight * ranking_loss(emb_CBD[..., :dim], scale, symmetric)
        return total

    return objective
