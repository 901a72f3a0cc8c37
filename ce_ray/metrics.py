"""IR metrics of one ranked list: NDCG@k (graded), MRR@k, MAP, Recall@k.

A ranked list is given as the gains of its documents in rank order (the qrels grade, 0 when unjudged).
Gains are linear (grade / log2(rank + 1)), as in trec_eval, BEIR and scikit-learn's `ndcg_score`; a
document is relevant when its grade is > 0. A query with no relevant document scores 0 everywhere, as
sentence-transformers' `CrossEncoderRerankingEvaluator` counts it.

`relevant_total` and `ideal_gains` take the judgments the list does not hold (relevant documents the first
stage missed): Recall and MAP divide by all relevant documents, and the ideal NDCG ranks all judged ones.
Without them the list's own labels are all there is, which is what the evaluator does.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import numpy as np


def metric_names(k: int = 10, recall_k: int = 100) -> list:
    return [f"ndcg@{k}", f"mrr@{k}", "map", f"recall@{recall_k}"]


def dcg(gains: np.ndarray, k: int) -> float:
    gains = np.asarray(gains, dtype=np.float64)[:k]
    return float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))


def ranking_metrics(gains: Iterable[float], k: int = 10, recall_k: int = 100,
                    relevant_total: Optional[int] = None, ideal_gains: Optional[Iterable[float]] = None
                    ) -> Dict[str, float]:
    """Metrics of one query; `gains[i]` is the grade of the document ranked i + 1."""
    gains = np.asarray(list(gains), dtype=np.float64)
    relevant = gains > 0
    total = int(relevant.sum()) if relevant_total is None else int(relevant_total)
    names = metric_names(k, recall_k)
    if total == 0:
        return dict.fromkeys(names, 0.0)
    ideal = np.sort(np.asarray(list(gains if ideal_gains is None else ideal_gains), dtype=np.float64))[::-1]
    ideal_dcg = dcg(ideal, k)
    hits = np.flatnonzero(relevant)
    first = hits[0] if len(hits) else None
    precision_at_hits = np.arange(1, len(hits) + 1) / (hits + 1)
    return {
        names[0]: dcg(gains, k) / ideal_dcg if ideal_dcg > 0 else 0.0,
        names[1]: 1.0 / (first + 1) if first is not None and first < k else 0.0,
        names[2]: float(precision_at_hits.sum() / total),
        names[3]: float(relevant[:recall_k].sum() / total),
    }


def mean_metrics(per_query: Iterable[Dict[str, float]]) -> Dict[str, float]:
    per_query = list(per_query)
    if not per_query:
        return {}
    return {name: float(np.mean([m[name] for m in per_query])) for name in per_query[0]}
