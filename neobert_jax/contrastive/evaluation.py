"""Local embedding benchmarks: STS (Spearman of cosine similarity against gold scores) and
retrieval (nDCG@10, recall@10, recall@100, MRR@10 of queries against a corpus, given relevance
judgments). `evaluate` takes any encode function, so one evaluator scores this project's embedder
during a run and any exported model through sentence-transformers (scripts/bench_embedder.py).

STS files: .jsonl / .parquet / datasets folders with `sentence1`, `sentence2`, `score` (STS-B's
columns). Retrieval folders, BEIR's layout: `corpus.jsonl` (`_id`, `text`, optional `title`),
`queries.jsonl` (`_id`, `text`), `qrels.tsv` or `qrels/test.tsv` (query-id, corpus-id, score with a
header line; score > 0 = relevant, graded). Only queries with a relevant document are scored. A
folder without corpus.jsonl whose subfolders are BEIR folders (NanoBEIR's shape) stands for them all.
Prompts: queries and sentence1 get the query prompt, documents and sentence2 the document prompt,
as the training's first and other text columns do.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable

import numpy as np

from neobert_jax.contrastive.columns import open_table
from neobert_jax.contrastive.config import as_list
from neobert_jax.data import sources
from neobert_jax.data.errors import DataError

K = 10
RECALL_DEPTH = 100  # recall@100: what a reranker placed after the embedder could still recover
_QUERY_CHUNK = 1024


@dataclasses.dataclass
class StsSet:
    name: str
    sentence1: list[str]
    sentence2: list[str]
    scores: np.ndarray


@dataclasses.dataclass
class RetrievalSet:
    name: str
    queries: list[str]
    corpus: list[str]
    relevance: list[dict[int, float]]  # per query: corpus index -> graded relevance (> 0)


def _set_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    return base.split(".")[0] or base


def load_sts(path: str) -> StsSet:
    table = open_table(path)
    return StsSet(_set_name(path), table.texts("sentence1"), table.texts("sentence2"), table.numbers("score"))


def _qrels_path(directory: str) -> str:
    for candidate in ("qrels.tsv", os.path.join("qrels", "test.tsv")):
        if os.path.isfile(os.path.join(directory, candidate)):
            return os.path.join(directory, candidate)
    raise DataError(f"{directory}: no qrels.tsv or qrels/test.tsv (query-id, corpus-id, score)")


def load_retrieval(directory: str) -> RetrievalSet:
    if not os.path.isdir(directory):
        raise DataError(f"eval.retrieval_dirs: {directory}: no such folder")
    tables = {}
    for part in ("corpus", "queries"):
        path = os.path.join(directory, f"{part}.jsonl")
        if not os.path.isfile(path):
            raise DataError(f"{directory}: no {part}.jsonl (records with _id and text)")
        tables[part] = open_table(path)
    corpus = tables["corpus"]
    titles = corpus.column("title") if "title" in corpus.names else [None] * len(corpus)
    doc_texts = [f"{title} {text}".strip() if title else text for title, text in zip(titles, corpus.texts("text"))]
    doc_index = {str(i): n for n, i in enumerate(corpus.column("_id"))}
    query_index = {str(i): n for n, i in enumerate(tables["queries"].column("_id"))}
    query_texts = tables["queries"].texts("text")
    relevance: dict[int, dict[int, float]] = {}
    qrels = _qrels_path(directory)
    with open(qrels, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if number == 1 or not row:
                continue  # header
            if len(row) < 3:
                raise DataError(f"{qrels}:{number}: expected query-id, corpus-id, score")
            query, doc, score = row[0], row[1], row[2]
            if query not in query_index:
                raise DataError(f"{qrels}:{number}: query-id {query!r} is not in queries.jsonl")
            if doc not in doc_index:
                raise DataError(f"{qrels}:{number}: corpus-id {doc!r} is not in corpus.jsonl")
            try:
                grade = float(score)
            except ValueError:
                raise DataError(f"{qrels}:{number}: score {score!r} is not a number") from None
            if grade > 0:
                relevance.setdefault(query_index[query], {})[doc_index[doc]] = grade
    if not relevance:
        raise DataError(f"{qrels}: no relevant (score > 0) judgments")
    judged = sorted(relevance)
    return RetrievalSet(_set_name(directory), [query_texts[q] for q in judged], doc_texts,
                        [relevance[q] for q in judged])


def expand_retrieval_dirs(directories) -> list[str]:
    """Each folder itself when it holds corpus.jsonl, else its subfolders that do (sorted)."""
    out = []
    for directory in as_list(directories):
        if os.path.isfile(os.path.join(directory, "corpus.jsonl")) or not os.path.isdir(directory):
            out.append(directory)  # load_retrieval names what is missing
            continue
        tasks = sorted(os.path.join(directory, name) for name in os.listdir(directory)
                       if os.path.isfile(os.path.join(directory, name, "corpus.jsonl")))
        if not tasks:
            raise DataError(f"{directory}: no corpus.jsonl, nor subfolders with one (BEIR layout)")
        out.extend(tasks)
    return out


def load_eval_sets(sts_files, retrieval_dirs) -> tuple[list[StsSet], list[RetrievalSet]]:
    sts_files = sources.resolve_files(sts_files, what="eval.sts_files")
    return [load_sts(p) for p in sts_files], [load_retrieval(d) for d in expand_retrieval_dirs(retrieval_dirs)]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = average_ranks(np.asarray(x, np.float64)), average_ranks(np.asarray(y, np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def top_k(query_QD: np.ndarray, corpus_CD: np.ndarray, k: int = K) -> np.ndarray:
    """(Q, k) corpus indices by decreasing dot product (equal scores: lower index first)."""
    k = min(k, len(corpus_CD))
    out = np.zeros((len(query_QD), k), np.int64)
    for start in range(0, len(query_QD), _QUERY_CHUNK):
        scores_QC = query_QD[start:start + _QUERY_CHUNK] @ corpus_CD.T
        candidates = np.argpartition(-scores_QC, k - 1, axis=1)[:, :k]  # the k best, unordered
        picked = np.take_along_axis(scores_QC, candidates, axis=1)
        order = np.lexsort((candidates, -picked), axis=1)
        out[start:start + len(scores_QC)] = np.take_along_axis(candidates, order, axis=1)
    return out


def per_query_metrics(ranked_QK: np.ndarray, relevance: list[dict[int, float]]) -> dict[str, np.ndarray]:
    """Each query's nDCG@10 (linear gains, as trec_eval), recall@10, MRR@10 and recall@100;
    `ranked_QK` holds each query's best RECALL_DEPTH (or fewer) documents in order."""
    discounts = 1.0 / np.log2(np.arange(2, K + 2))
    ndcg, recall, mrr, recall_deep = [], [], [], []
    for ranked, relevant in zip(ranked_QK, relevance):
        gains_all = np.array([relevant.get(int(d), 0.0) for d in ranked])
        gains = gains_all[:K]
        ideal = np.sort(np.fromiter(relevant.values(), np.float64))[::-1][:K]
        ndcg.append(float(gains @ discounts[:len(gains)]) / float(ideal @ discounts[:len(ideal)]))
        recall.append(float(np.count_nonzero(gains)) / len(relevant))
        recall_deep.append(float(np.count_nonzero(gains_all[:RECALL_DEPTH])) / len(relevant))
        hits = np.flatnonzero(gains)
        mrr.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
    return {f"ndcg@{K}": np.asarray(ndcg), f"recall@{K}": np.asarray(recall), f"mrr@{K}": np.asarray(mrr),
            f"recall@{RECALL_DEPTH}": np.asarray(recall_deep)}


def retrieval_metrics(ranked_QK: np.ndarray, relevance: list[dict[int, float]]) -> dict[str, float]:
    """The per-query metrics averaged over the queries."""
    return {name: float(np.mean(values)) for name, values in per_query_metrics(ranked_QK, relevance).items()}


def evaluate(encode: Callable[[list[str]], np.ndarray], sts_sets: list[StsSet],
             retrieval_sets: list[RetrievalSet], query_prompt: str = "", document_prompt: str = "",
             per_query: dict | None = None) -> dict[str, float]:
    """{"<set>_spearman" | "<set>_ndcg@10" | ...: value}; `encode` gives unit vectors. `per_query`, when
    given, receives each retrieval metric's per-query values under the same keys (paired comparisons)."""
    results = {}

    def encode_with(prompt, texts):
        return encode([prompt + t for t in texts] if prompt else texts)

    for s in sts_sets:
        a, b = encode_with(query_prompt, s.sentence1), encode_with(document_prompt, s.sentence2)
        results[f"{s.name}_spearman"] = spearman(np.sum(a * b, axis=1), s.scores)
    for r in retrieval_sets:
        ranked = top_k(encode_with(query_prompt, r.queries), encode_with(document_prompt, r.corpus), k=RECALL_DEPTH)
        each = per_query_metrics(ranked, r.relevance)
        results.update({f"{r.name}_{metric}": float(np.mean(values)) for metric, values in each.items()})
        if per_query is not None:
            per_query.update({f"{r.name}_{metric}": values for metric, values in each.items()})
    return results


RETRIEVAL_METRICS = (f"ndcg@{K}", f"recall@{K}", f"mrr@{K}", f"recall@{RECALL_DEPTH}")


def retrieval_table(results: dict[str, float], names: list[str]) -> tuple[str, dict[str, float]]:
    """One row per retrieval set and their mean -> (the table, {"mean_<metric>": value})."""
    means = {f"mean_{m}": float(np.mean([results[f"{n}_{m}"] for n in names])) for m in RETRIEVAL_METRICS}
    width = max(len(n) for n in [*names, "mean"])
    lines = [f"{'task':<{width}}  " + "  ".join(f"{m:>10}" for m in RETRIEVAL_METRICS)]
    for name, values in [*((n, [results[f"{n}_{m}"] for m in RETRIEVAL_METRICS]) for n in names),
                         ("mean", list(means.values()))]:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>10.4f}" for v in values))
    return "\n".join(lines), means
