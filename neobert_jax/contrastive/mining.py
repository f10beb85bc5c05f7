"""Hard-negative mining: for each (anchor, positive) pair, corpus texts the embedder ranks high for
the anchor that are not its positive.

Mined negatives are the strongest single lever for retrieval quality, and the most dangerous: the
texts ranked highest for a query are often unlabelled positives. The guards are the usual ones
(sentence-transformers' `mine_hard_negatives`, NV-Retriever's positive-aware filter):
- every positive of the same anchor text, and the anchor text itself, is never a negative;
- `skip_top`: the first ranks (after those) are skipped, where false negatives crowd;
- `max_score_ratio`: a candidate scoring above that share of the positive's score is skipped;
- `margin` (when set): a candidate must also score at least this much below the positive.
Negatives are then the best-ranked (`sampling="top"`) or a random draw (`"random"`) of the candidates
within `depth` ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from neobert_jax.contrastive.evaluation import top_k

SAMPLING = ("top", "random")


@dataclasses.dataclass(frozen=True)
class MiningSettings:
    num_negatives: int = 1
    depth: int = 50  # candidates are the first `depth` ranks, positives excluded
    skip_top: int = 0
    max_score_ratio: float = 0.95  # 1.0: only candidates above the positive are skipped; above 1 keeps them too
    margin: float | None = None  # off by default: the ratio guard is the usual one
    sampling: str = "top"
    seed: int = 0

    def check(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.skip_top < 0 or self.depth <= self.skip_top:
            raise ValueError(f"depth ({self.depth}) must exceed skip_top ({self.skip_top}) >= 0")
        if not self.max_score_ratio > 0.0:
            raise ValueError(f"max_score_ratio must be positive, got {self.max_score_ratio}")
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling {self.sampling!r} is not one of {SAMPLING}")


@dataclasses.dataclass
class Mined:
    negatives: list[list[int]]  # per pair: corpus indices, best first (at most num_negatives)
    positive_scores: np.ndarray  # (pairs,) the anchor-positive cosine
    negative_scores: list[list[float]]
    filtered: dict[str, int]  # candidates dropped by each guard, summed over pairs


def mine(anchors: Sequence[str], positives: Sequence[str], corpus: Sequence[str],
         encode: Callable[[list[str]], np.ndarray], settings: MiningSettings,
         prompts: tuple[str, str] = ("", "")) -> Mined:
    """Negatives from `corpus` (unique texts) for each pair; `encode` gives unit vectors; `prompts`:
    (query prompt, document prompt) put before anchors and before corpus texts, as the model was trained."""
    settings.check()
    query_prompt, document_prompt = prompts
    index = {text: i for i, text in enumerate(corpus)}
    excluded: dict[str, set[int]] = {}
    for anchor, positive in zip(anchors, positives):
        taboo = excluded.setdefault(anchor, {index[anchor]} if anchor in index else set())
        if positive in index:
            taboo.add(index[positive])
    unique_anchors = list(excluded)
    anchor_row = {text: i for i, text in enumerate(unique_anchors)}
    anchor_QD = encode([query_prompt + text for text in unique_anchors])
    corpus_CD = encode([document_prompt + text for text in corpus])
    missing = [p for p in dict.fromkeys(positives) if p not in index]
    extra_PD = encode([document_prompt + text for text in missing]) if missing else None
    extra_row = {text: i for i, text in enumerate(missing)}
    widest = max(len(t) for t in excluded.values())
    ranked_QK = top_k(anchor_QD, corpus_CD, settings.depth + widest)
    rng = np.random.default_rng(settings.seed)

    out = Mined([], np.zeros(len(anchors), np.float32), [], {"positives": 0, "skip_top": 0, "max_score_ratio": 0,
                                                                 "margin": 0})
    for i, (anchor, positive) in enumerate(zip(anchors, positives)):
        q = anchor_row[anchor]
        positive_vector = corpus_CD[index[positive]] if positive in index else extra_PD[extra_row[positive]]
        pos_score = float(anchor_QD[q] @ positive_vector)
        out.positive_scores[i] = pos_score
        taboo = excluded[anchor]
        ranked = []
        for c in ranked_QK[q]:
            if len(ranked) == settings.depth:
                break
            if c in taboo:
                out.filtered["positives"] += 1
            else:
                ranked.append(c)
        candidates = []
        for rank, c in enumerate(ranked):
            score = float(anchor_QD[q] @ corpus_CD[c])
            if rank < settings.skip_top:
                out.filtered["skip_top"] += 1
            elif score > settings.max_score_ratio * pos_score:
                out.filtered["max_score_ratio"] += 1
            elif settings.margin is not None and score > pos_score - settings.margin:
                out.filtered["margin"] += 1
            else:
                candidates.append((c, score))
        if settings.sampling == "random" and len(candidates) > settings.num_negatives:
            picked = sorted(rng.choice(len(candidates), settings.num_negatives, replace=False))
            candidates = [candidates[j] for j in picked]
        chosen = candidates[:settings.num_negatives]
        out.negatives.append([c for c, _ in chosen])
        out.negative_scores.append([s for _, s in chosen])
    return out
