"""Contrastive objectives over the embeddings of a whole (global) batch.

`emb_CBD` holds column k of example b at [k, b]: anchors, positives, then each hard-negative
column; `present_CB` (the in-batch losses) marks the texts a source lacks (a pairs step in a run
with triplets) as absent: no candidate of any anchor. Under jit on a mesh these arrays are global,
so every anchor is scored against the positives and negatives of all devices (XLA gathers the
candidates).
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


def _candidates_logits(query_BD, emb_CBD, scale: float, present_CB):
    """(B, (C - 1) * B) scaled cosines of each query with every positive and negative; absent
    ones -inf, so each step's softmax is sentence-transformers' on its source's columns alone."""
    C, B, D = emb_CBD.shape
    logits_BK = scale * cosine_matrix(query_BD, emb_CBD[1:].reshape((C - 1) * B, D))
    return logits_BK if present_CB is None else jnp.where(present_CB[1:].reshape(1, -1), logits_BK, -jnp.inf)


def ranking_loss(emb_CBD, scale: float, symmetric: bool, present_CB=None):
    """InfoNCE / MultipleNegativesRanking: each anchor must pick its positive among all positives
    and all (present) hard negatives of the batch. symmetric: averaged with each positive picking
    its anchor among all anchors."""
    anchor_BD = emb_CBD[0]
    loss = _cross_entropy_diagonal(_candidates_logits(anchor_BD, emb_CBD, scale, present_CB))
    if symmetric:
        loss = (loss + _cross_entropy_diagonal(scale * cosine_matrix(emb_CBD[1], anchor_BD))) / 2
    return loss


def gte_loss(emb_CBD, scale: float, present_CB=None):
    """GTE's improved contrastive loss (arXiv 2308.03281): InfoNCE whose partition for pair i holds,
    besides every document and hard negative for query i, the other queries for query i, the other
    queries for document i and the other documents for document i: four times the in-batch
    negatives from the same embeddings."""
    query_BD, doc_BD = emb_CBD[0], emb_CBD[1]
    off_diagonal = ~jnp.eye(emb_CBD.shape[1], dtype=bool)
    masked = lambda a, b: jnp.where(off_diagonal, scale * cosine_matrix(a, b), -jnp.inf)
    logits_BK = jnp.concatenate([
        _candidates_logits(query_BD, emb_CBD, scale, present_CB),
        masked(query_BD, query_BD), masked(doc_BD, query_BD), masked(doc_BD, doc_BD)], axis=1)
    return _cross_entropy_diagonal(logits_BK)


def mse_loss(emb_BD, target_BD):
    """Mean squared error over all elements (torch MSELoss), the student against teacher vectors."""
    return jnp.mean(jnp.square(emb_BD - target_BD))


def pairwise_scores(a_BD, b_BD, similarity: str):
    """(B,) similarity of row b of `a` with row b of `b`: dot (sentence-transformers' default for
    MarginMSE and DistillKLDiv, on the model's output) or cosine."""
    if similarity == "cosine":
        a_BD, b_BD = l2_normalize(a_BD), l2_normalize(b_BD)
    return jnp.einsum("bd,bd->b", a_BD, b_BD, precision=_HIGHEST)


def cosent_loss(emb_CBD, labels_B, scale: float):
    """CoSENT: log(1 + sum over pairs (i, j) with label_i > label_j of exp(scale * (cos_j - cos_i)))."""
    scores_B = scale * pairwise_scores(emb_CBD[0], emb_CBD[1], "cosine")
    diff_BB = scores_B[None, :] - scores_B[:, None]  # [i, j] = s_j - s_i
    diff_BB = jnp.where(labels_B[:, None] > labels_B[None, :], diff_BB, -jnp.inf)
    return jax.nn.logsumexp(jnp.concatenate([jnp.zeros(1), diff_BB.reshape(-1)]))


def margin_mse_loss(emb_CBD, labels_BK, similarity: str):
    """MarginMSE: MSE between sim(q, pos) - sim(q, neg_k) and the teacher's margins, given as K =
    negatives margins or as K = negatives + 1 teacher scores (positive first)."""
    negatives = emb_CBD.shape[0] - 2
    if labels_BK.shape[1] == negatives + 1:
        labels_BK = labels_BK[:, :1] - labels_BK[:, 1:]
    positive_B = pairwise_scores(emb_CBD[0], emb_CBD[1], similarity)
    margins_BK = jnp.stack([positive_B - pairwise_scores(emb_CBD[0], e, similarity) for e in emb_CBD[2:]], axis=1)
    return jnp.mean(jnp.square(margins_BK - labels_BK))


def distill_kl_loss(emb_CBD, teacher_BK, similarity: str, temperature: float):
    """KL(teacher || student) of the softmax over each query's K candidates, both scores divided by
    the temperature, the batch mean times temperature² (torch KLDivLoss "batchmean")."""
    student_BK = jnp.stack([pairwise_scores(emb_CBD[0], e, similarity) for e in emb_CBD[1:]], axis=1)
    log_student = jax.nn.log_softmax(student_BK / temperature, axis=1)
    log_teacher = jax.nn.log_softmax(teacher_BK / temperature, axis=1)
    kl_B = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=1)
    return jnp.mean(kl_B) * temperature ** 2


def make_objective(loss_cfg, *, columns: int, normalize: bool, dims: list[int], weights: list[float]):
    """(emb_ND in step-text order, targets_BD (vectors or scores) or None, present_N or None) -> scalar loss.

    Embeddings are L2-normalized first when the exported model normalizes (so MSE compares what
    users will get). Matryoshka: the loss is the weighted sum over the leading `dims` of each
    embedding; ranking losses renormalize each prefix through the cosine, MSE cuts the targets too.
    """
    name, scale, symmetric = loss_cfg.name, float(loss_cfg.scale), bool(loss_cfg.symmetric)
    similarity, temperature = loss_cfg.get("similarity", "dot"), float(loss_cfg.get("temperature", 1.0))

    def objective(emb_ND, targets_BD=None, present_N=None):
        emb_CBD = emb_ND.reshape(columns, emb_ND.shape[0] // columns, emb_ND.shape[-1])
        present_CB = None if present_N is None else present_N.reshape(emb_CBD.shape[:2])
        if normalize:
            emb_CBD = l2_normalize(emb_CBD)
        total = 0.0
        for dim, weight in zip(dims or [emb_ND.shape[-1]], weights or [1.0]):
            if name == "mse":
                total += weight * mse_loss(emb_CBD[0, :, :dim], targets_BD[:, :dim])
            elif name == "cosent":
                total += weight * cosent_loss(emb_CBD[..., :dim], targets_BD[:, 0], scale)
            elif name == "margin_mse":
                total += weight * margin_mse_loss(emb_CBD[..., :dim], targets_BD, similarity)
            elif name == "distill_kl":
                total += weight * distill_kl_loss(emb_CBD[..., :dim], targets_BD, similarity, temperature)
            elif name == "gte":
                total += weight * gte_loss(emb_CBD[..., :dim], scale, present_CB)
            else:
                total += weight * ranking_loss(emb_CBD[..., :dim], scale, symmetric, present_CB)
        return total

    return objective
