"""Losses, pooling, packing and evaluation metrics against straightforward numpy references."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats

from neobert_jax.contrastive import losses
from neobert_jax.contrastive.batching import ladder, pack_rows
from neobert_jax.contrastive.evaluation import per_query_metrics, retrieval_metrics, spearman, top_k
from neobert_jax.contrastive.pooling import pool_rows


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_cross_entropy_diagonal(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_probs))


def np_ranking(emb_CBD, scale, symmetric):
    """Each anchor against every positive and negative of the batch, with cosine similarity."""
    e = np_normalize(emb_CBD.astype(np.float64))
    anchors, candidates = e[0], np.concatenate(list(e[1:]))
    loss = np_cross_entropy_diagonal(scale * anchors @ candidates.T)
    if symmetric:
        loss = (loss + np_cross_entropy_diagonal(scale * e[1] @ anchors.T)) / 2
    return loss


def loss_cfg(name, scale=20.0, symmetric=False):
    return ml_collections.ConfigDict({"name": name, "scale": scale, "symmetric": symmetric})


@pytest.fixture(scope="module")
def emb_CBD():
    return np.random.default_rng(0).normal(size=(3, 6, 8)).astype(np.float32)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("scale", [20.0, 3.0])
def test_ranking_loss_matches_numpy(emb_CBD, scale, symmetric):
    ours = float(losses.ranking_loss(jnp.asarray(emb_CBD), scale, symmetric))
    assert abs(ours - np_ranking(emb_CBD, scale, symmetric)) < 1e-5
    pairs_only = float(losses.ranking_loss(jnp.asarray(emb_CBD[:2]), scale, symmetric))
    assert abs(pairs_only - np_ranking(emb_CBD[:2], scale, symmetric)) < 1e-5
    assert abs(pairs_only - ours) > 1e-3  # the hard negatives take part


def np_gte(emb_CBD, scale):
    """Pair i's partition, written term by term: every document and negative for query i, the
    other queries for query i, the other queries for document i, the other documents for document i."""
    e = np_normalize(emb_CBD.astype(np.float64))
    q, d, B = e[0], e[1], e.shape[1]
    candidates = np.concatenate(list(e[1:]))
    total = 0.0
    for i in range(B):
        others = [j for j in range(B) if j != i]
        terms = np.concatenate([candidates @ q[i], q[others] @ q[i], q[others] @ d[i], d[others] @ d[i]])
        total += -scale * (q[i] @ d[i]) + np.log(np.exp(scale * terms).sum())
    return total / B


@pytest.mark.parametrize("scale", [20.0, 3.0])
def test_gte_loss_matches_numpy(emb_CBD, scale):
    objective = losses.make_objective(loss_cfg("gte", scale), columns=3, normalize=False, dims=[], weights=[])
    ours = float(objective(jnp.asarray(emb_CBD.reshape(-1, 8))))
    assert abs(ours - np_gte(emb_CBD, scale)) < 1e-5
    assert ours > np_ranking(emb_CBD, scale, False) + 1e-3  # more negatives in every partition


@pytest.mark.parametrize("normalize", [True, False])
def test_matryoshka_sums_the_prefix_losses(emb_CBD, normalize):
    dims, weights = [8, 4, 2], [1.0, 0.5, 0.25]
    objective = losses.make_objective(loss_cfg("mnrl", symmetric=True), columns=3, normalize=normalize,
                                      dims=dims, weights=weights)
    ours = float(objective(jnp.asarray(emb_CBD.reshape(-1, 8))))
    reference = sum(w * np_ranking(emb_CBD[..., :d], 20.0, True) for d, w in zip(dims, weights))
    assert abs(ours - reference) < 1e-5


@pytest.mark.parametrize("name, symmetric, dims", [("mnrl", False, []), ("mnrl", True, [8, 4]), ("gte", False, [])])
def test_absent_texts_are_no_candidates(emb_CBD, name, symmetric, dims):
    """A pairs step of a run with triplets: its negatives' slots hold anything (here the anchors)
    and are absent; the loss is the pairs' alone, sentence-transformers' on that batch."""
    weights = [1.0] * len(dims)
    objective = losses.make_objective(loss_cfg(name, symmetric=symmetric), columns=3, normalize=False, dims=dims,
                                      weights=weights)
    filled = np.concatenate([emb_CBD[:2], emb_CBD[:1]])
    present_N = jnp.asarray(np.repeat(np.arange(3) < 2, 6))
    ours = float(objective(jnp.asarray(filled.reshape(-1, 8)), None, present_N))
    np_loss = np_gte if name == "gte" else lambda e, scale: np_ranking(e, scale, symmetric)
    reference = sum(w * np_loss(emb_CBD[:2, :, :d], 20.0) for d, w in zip(dims or [8], weights or [1.0]))
    assert abs(ours - reference) < 1e-5
    everything = float(objective(jnp.asarray(emb_CBD.reshape(-1, 8)), None, jnp.ones(18, bool)))
    assert abs(everything - float(objective(jnp.asarray(emb_CBD.reshape(-1, 8))))) < 1e-6
    assert abs(everything - ours) > 1e-3  # the negatives, when present, take part


def test_each_step_of_a_mixed_run_is_sentence_transformers_mnrl_on_its_columns(emb_CBD):
    """Their MultipleNegativesRankingLoss on a pairs batch (anchors, positives) and on a triplets
    batch, against ours on the run's 3-column steps, the pairs' negatives absent."""
    import torch
    from sentence_transformers.sentence_transformer import losses as st_losses

    theirs = st_losses.MultipleNegativesRankingLoss(None)
    objective = losses.make_objective(loss_cfg("mnrl"), columns=3, normalize=False, dims=[], weights=[])
    for columns in (2, 3):
        step = np.concatenate([emb_CBD[:columns], emb_CBD[:3 - columns]])  # absent slots: the anchors again
        present_N = jnp.asarray(np.repeat(np.arange(3) < columns, 6))
        ours = float(objective(jnp.asarray(step.reshape(-1, 8)), None, present_N))
        reference = float(theirs.compute_loss_from_embeddings([torch.tensor(e) for e in emb_CBD[:columns]], None))
        assert abs(ours - reference) < 1e-5, columns


@pytest.mark.parametrize("normalize", [True, False])
def test_mse_against_teacher_vectors(emb_CBD, normalize):
    student, teacher = emb_CBD[0], emb_CBD[1]
    full = losses.make_objective(loss_cfg("mse"), columns=1, normalize=normalize, dims=[], weights=[])
    s = np_normalize(student) if normalize else student
    assert abs(float(full(jnp.asarray(student), jnp.asarray(teacher))) - np.mean((s - teacher) ** 2)) < 1e-6
    nested = losses.make_objective(loss_cfg("mse"), columns=1, normalize=normalize, dims=[8, 3], weights=[1.0, 2.0])
    reference = np.mean((s - teacher) ** 2) + 2 * np.mean((s[:, :3] - teacher[:, :3]) ** 2)
    assert abs(float(nested(jnp.asarray(student), jnp.asarray(teacher))) - reference) < 1e-6


def test_pooling_per_segment_of_packed_rows():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(2, 10, 4)).astype(np.float32)
    segments = np.array([[1, 1, 1, 2, 2, 3, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 2, 2, 0]], np.int32)
    positions = np.array([[0, 1, 2, 0, 1, 0, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5, 6, 0, 1, 0]], np.int32)
    mean = np.asarray(pool_rows(jnp.asarray(hidden), jnp.asarray(segments), jnp.asarray(positions), 4, "mean"))
    cls = np.asarray(pool_rows(jnp.asarray(hidden), jnp.asarray(segments), jnp.asarray(positions), 4, "cls"))
    for r in range(2):
        for s in range(4):
            tokens = np.flatnonzero(segments[r] == s + 1)
            expected_mean = hidden[r, tokens].mean(0) if len(tokens) else np.zeros(4)
            expected_cls = hidden[r, tokens[0]] if len(tokens) else np.zeros(4)
            np.testing.assert_allclose(mean[r, s], expected_mean, atol=1e-6)
            np.testing.assert_allclose(cls[r, s], expected_cls, atol=1e-6)


def test_ladder_and_first_fit_packing():
    assert [ladder(n) for n in (1, 7, 8, 9, 11, 16, 17, 100, 129)] == [1, 7, 8, 10, 12, 16, 20, 112, 160]
    lengths = np.random.default_rng(2).integers(3, 40, 200)
    row, slot, start, rows = pack_rows(lengths, 64, max_per_row=5)
    for r in range(rows):
        members = np.flatnonzero(row == r)
        assert len(members) <= 5 and lengths[members].sum() <= 64
        assert sorted(slot[members]) == list(range(len(members)))
        spans = sorted(zip(start[members], start[members] + lengths[members]))
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert rows <= np.ceil(lengths.sum() / 64 * 1.15)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)
    assert abs(spearman(x, y) - scipy.stats.spearmanr(x, y).statistic) < 1e-12


def test_retrieval_metrics_on_a_hand_made_ranking():
    corpus = np.eye(12, dtype=np.float32)
    queries = np.stack([np.linspace(1, 0, 12), np.linspace(0, 1, 12)]).astype(np.float32)
    ranked = top_k(queries, corpus)
    assert ranked[0].tolist() == list(range(10)) and ranked[1].tolist() == list(range(11, 1, -1))
    relevance = [{2: 1.0, 11: 1.0}, {11: 2.0, 10: 1.0}]
    metrics = retrieval_metrics(ranked, relevance)
    ndcg_0 = (1 / np.log2(4)) / (1 + 1 / np.log2(3))  # hit at rank 3, doc 11 outside the top 10
    assert metrics["ndcg@10"] == pytest.approx((ndcg_0 + 1.0) / 2)
    assert metrics["recall@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["mrr@10"] == pytest.approx((1 / 3 + 1.0) / 2)
    deep = retrieval_metrics(top_k(queries, corpus, k=100), relevance)  # 12 documents: all of them ranked
    assert {k: deep[k] for k in metrics if k != "recall@100"} == {k: v for k, v in metrics.items() if k != "recall@100"}
    assert metrics["recall@100"] == pytest.approx((0.5 + 1.0) / 2) and deep["recall@100"] == 1.0
    each = per_query_metrics(ranked, relevance)  # what the bench's paired comparison reads
    np.testing.assert_allclose(each["ndcg@10"], [ndcg_0, 1.0])
    np.testing.assert_allclose(each["mrr@10"], [1 / 3, 1.0])


# --- score losses (sentence-transformers' CoSENTLoss, MarginMSELoss, DistillKLDivLoss)

def np_cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def np_cosent(emb_CBD, labels, scale):
    """log(1 + sum over pairs with label_i > label_j of exp(scale * (cos_j - cos_i)))."""
    cos = [np_cos(a, b) for a, b in zip(emb_CBD[0].astype(np.float64), emb_CBD[1].astype(np.float64))]
    terms = [np.exp(scale * (cos[j] - cos[i])) for i in range(len(cos)) for j in range(len(cos))
             if labels[i] > labels[j]]
    return np.log(1 + sum(terms))


def np_scores(emb_CBD, similarity):
    """(B, C - 1): similarity of each query with each of its candidates."""
    e = emb_CBD.astype(np.float64)
    sim = np_cos if similarity == "cosine" else (lambda a, b: float(a @ b))
    return np.array([[sim(e[0, b], e[c, b]) for c in range(1, len(e))] for b in range(e.shape[1])])


def np_softmax(x):
    x = np.exp(x - x.max(axis=1, keepdims=True))
    return x / x.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("scale", [20.0, 2.0])
def test_cosent_matches_numpy(emb_CBD, scale):
    labels = np.array([0.5, 3.0, 3.0, 1.0, 4.5, 0.0], np.float32)  # ties give no pair
    objective = losses.make_objective(loss_cfg("cosent", scale=scale), columns=2, normalize=True, dims=[], weights=[])
    ours = float(objective(jnp.asarray(emb_CBD[:2].reshape(-1, 8)), jnp.asarray(labels[:, None])))
    assert abs(ours - np_cosent(emb_CBD[:2], labels, scale)) < 1e-4 * max(1.0, ours)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_margin_mse_matches_numpy(emb_CBD, similarity):
    cfg = loss_cfg("margin_mse")
    cfg.similarity = similarity
    objective = losses.make_objective(cfg, columns=3, normalize=False, dims=[], weights=[])
    scores = np_scores(emb_CBD, similarity)  # (B, 2): positive, negative
    margins = np.random.default_rng(4).normal(size=(6, 1)).astype(np.float32)
    reference = np.mean((scores[:, :1] - scores[:, 1:] - margins) ** 2)
    ours = float(objective(jnp.asarray(emb_CBD.reshape(-1, 8)), jnp.asarray(margins)))
    assert abs(ours - reference) < 1e-4 * max(1.0, reference)
    teacher = np.random.default_rng(5).normal(size=(6, 2)).astype(np.float32)  # scores of pos, neg: margin taken
    reference = np.mean((scores[:, :1] - scores[:, 1:] - (teacher[:, :1] - teacher[:, 1:])) ** 2)
    assert abs(float(objective(jnp.asarray(emb_CBD.reshape(-1, 8)), jnp.asarray(teacher))) - reference) < 1e-4 * max(1.0, reference)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distill_kl_matches_numpy(emb_CBD, temperature):
    cfg = loss_cfg("distill_kl")
    cfg.temperature = temperature
    objective = losses.make_objective(cfg, columns=3, normalize=True, dims=[], weights=[])
    teacher = np.random.default_rng(6).normal(size=(6, 2)).astype(np.float32) * 3
    student = np_scores(np_normalize(emb_CBD), "dot")
    p, q = np_softmax(teacher / temperature), np_softmax(student / temperature)
    reference = np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)) * temperature ** 2
    ours = float(objective(jnp.asarray(emb_CBD.reshape(-1, 8)), jnp.asarray(teacher)))
    assert abs(ours - reference) < 1e-5


def test_score_losses_equal_sentence_transformers():
    """The same embeddings and labels through sentence-transformers' own loss functions."""
    import torch
    from sentence_transformers.sentence_transformer import losses as st_losses

    rng = np.random.default_rng(7)
    emb = rng.normal(size=(4, 5, 8)).astype(np.float32)
    unit = np_normalize(emb)  # the output of a model with a Normalize module
    labels = rng.normal(size=5).astype(np.float32)
    scores = rng.normal(size=(5, 3)).astype(np.float32)
    cases = [("cosent", st_losses.CoSENTLoss(None), 2, labels[:, None], labels),
             ("margin_mse", st_losses.MarginMSELoss(None), 4, scores, scores),
             ("distill_kl", st_losses.DistillKLDivLoss(None, temperature=2.0), 4, scores, scores)]
    for name, st_loss, columns, ours_labels, st_labels in cases:
        cfg = loss_cfg(name)
        cfg.temperature = 2.0
        objective = losses.make_objective(cfg, columns=columns, normalize=True, dims=[], weights=[])
        ours = float(objective(jnp.asarray(emb[:columns].reshape(-1, 8)), jnp.asarray(ours_labels)))
        theirs = float(st_loss.compute_loss_from_embeddings([torch.tensor(e) for e in unit[:columns]],
                                                            torch.tensor(st_labels)))
        assert abs(ours - theirs) < 1e-4 * max(1.0, abs(theirs)), name
