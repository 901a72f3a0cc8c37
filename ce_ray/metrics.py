"""IR metrics of one ranked list: NDCG@k (graded), MRR@k, MAP, Recall@k.

A ranked list is given as the gains of its documents in rank order (the qrels grade, 0 when unjudged).
Gains are linear (grade / log2(rank + 1)), as in trec_eval, BEIR and scikit-learn's `ndcg_score`; a
document is relevant when its grade is > 0. A negative grade (some TREC qrels mark spam or junk so) gains 0, as
trec_eval counts it: NDCG stays within [0, 1]. A query with no relevant document scores 0 everywhere, as
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
    gains = np.maximum(np.asarray(gains, dtype=np.float64)[:k], 0.0)  # a negative grade gains 0 (trec_eval)
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


def lists_metrics(lists: np.ndarray, gains: np.ndarray, count: int, k: int = 10, recall_k: int = 100,
                  relevant_total: Optional[np.ndarray] = None, ideal_dcg: Optional[np.ndarray] = None
                  ) -> Dict[str, np.ndarray]:
    """`ranking_metrics` of `count` ranked lists at once, one array per metric: row i belongs to list
    `lists[i]` (0 to count - 1, ascending: each list's rows together, in rank order) and has grade `gains[i]`.
    `relevant_total` and `ideal_dcg` (at k), per list, take the judgments the lists do not hold."""
    lists = np.asarray(lists, dtype=np.int64)
    gains = np.maximum(np.asarray(gains, dtype=np.float64), 0.0)  # a negative grade gains 0 (trec_eval)
    starts = np.searchsorted(lists, np.arange(count))
    rank = np.arange(len(lists)) - starts[lists]  # 0 is the first of its list
    relevant, top = gains > 0, rank < k
    total = relevant_total if relevant_total is not None else np.bincount(lists, weights=relevant, minlength=count)
    dcg = np.bincount(lists[top], weights=gains[top] / np.log2(rank[top] + 2), minlength=count)
    if ideal_dcg is None:  # each list's own grades, best first
        ideal = gains[np.lexsort((-gains, lists))]
        ideal_dcg = np.bincount(lists[top], weights=ideal[top] / np.log2(rank[top] + 2), minlength=count)
    hits_before = np.concatenate([[0], np.cumsum(relevant)])  # relevant rows before each row, all lists
    hits = hits_before[1:] - hits_before[starts][lists]  # relevant rows up to this one, in its list
    precision = np.bincount(lists[relevant], weights=hits[relevant] / (rank[relevant] + 1), minlength=count)
    first = np.full(count, np.inf)
    np.minimum.at(first, lists[relevant & top], rank[relevant & top])
    found = np.bincount(lists[relevant & (rank < recall_k)], minlength=count)
    judged = total > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        names = metric_names(k, recall_k)
        metrics = {names[0]: np.where(ideal_dcg > 0, dcg / ideal_dcg, 0.0), names[1]: 1.0 / (first + 1),
                   names[2]: precision / total, names[3]: found / total}
    return {name: np.where(judged, values, 0.0) for name, values in metrics.items()}


def mean_metrics(per_query: Iterable[Dict[str, float]]) -> Dict[str, float]:
    per_query = list(per_query)
    if not per_query:
        return {}
    return {name: float(np.mean([m[name] for m in per_query])) for name in per_query[0]}
