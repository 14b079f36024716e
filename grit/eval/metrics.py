"""Evaluation metrics as plain functions: correlation (STS), ranking (retrieval), QA overlap, classification.

Numpy and the standard library only, so each formula can be read here and checked by hand. Ranking metrics follow
trec_eval / pytrec_eval as BEIR and MTEB use them; QA metrics follow the official SQuAD v1.1 evaluation script.

Example:
    >>> spearman([1, 2, 2, 3], [10, 20, 20, 40])
    1.0
    >>> ndcg_at_k([["d1", "d2"]], [{"d2": 1}], k=10)
    0.6309...
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

Qrels = Mapping[str, int]  # doc id -> graded relevance (> 0 is relevant)


# --- correlation ---------------------------------------------------------------------------------------------------


def rankdata(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get the average of the ranks they span (``scipy.stats.rankdata(method="average")``)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    # Average over each run of equal values: ranks in a run are consecutive, so the mean is (first + last) / 2.
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    for start, n in zip(first, counts, strict=True):
        if n > 1:
            ranks[order[start : start + n]] = start + (n + 1) / 2
    return ranks


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation; NaN where it is undefined (fewer than 2 points, or either side constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson needs two 1-D sequences of the same length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy / denom) if denom > 0 else float("nan")


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the average ranks (ties share their mean rank, as in scipy)."""
    return pearson(rankdata(x), rankdata(y))


# --- ranking (one ranked list of doc ids per query, best first; one qrels dict per query) -------------------------


def _check_runs(ranked: Sequence[Sequence[str]], qrels: Sequence[Qrels], k: int) -> None:
    if len(ranked) != len(qrels):
        raise ValueError(f"got {len(ranked)} ranked lists but {len(qrels)} qrels; need one of each per query")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain of gains in rank order: sum of gain_i / log2(i + 1), ranks i from 1."""
    return float(sum(g / math.log2(i + 2) for i, g in enumerate(gains)))


def ndcg_at_k(ranked: Sequence[Sequence[str]], qrels: Sequence[Qrels], k: int = 10) -> float:
    """Mean nDCG@k over queries, trec_eval's ``ndcg_cut_k``: gain = graded relevance, discount log2(rank + 1).

    The ideal DCG sorts the query's judged relevances (all of them, retrieved or not) in decreasing order.
    Judgments <= 0 add no gain. A query with no relevant document scores 0 (callers usually leave such queries out,
    as BEIR does).
    """
    _check_runs(ranked, qrels, k)
    scores = []
    for docs, rels in zip(ranked, qrels, strict=True):
        ideal = dcg(sorted((r for r in rels.values() if r > 0), reverse=True)[:k])
        gains = [max(rels.get(d, 0), 0) for d in docs[:k]]
        scores.append(dcg(gains) / ideal if ideal > 0 else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def mrr_at_k(ranked: Sequence[Sequence[str]], qrels: Sequence[Qrels], k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant (relevance > 0) document within the top k; 0 when none is."""
    _check_runs(ranked, qrels, k)
    scores = []
    for docs, rels in zip(ranked, qrels, strict=True):
        rank = next((i + 1 for i, d in enumerate(docs[:k]) if rels.get(d, 0) > 0), None)
        scores.append(1.0 / rank if rank else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def recall_at_k(ranked: Sequence[Sequence[str]], qrels: Sequence[Qrels], k: int = 100) -> float:
    """Mean over queries of (relevant documents in the top k) / (relevant documents judged); 0 for none judged."""
    _check_runs(ranked, qrels, k)
    scores = []
    for docs, rels in zip(ranked, qrels, strict=True):
        relevant = {d for d, r in rels.items() if r > 0}
        scores.append(len(relevant.intersection(docs[:k])) / len(relevant) if relevant else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


# --- QA and generation overlap -------------------------------------------------------------------------------------

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 when the normalized prediction equals any normalized gold answer, else 0.0."""
    answers = [answers] if isinstance(answers, str) else answers
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def _overlap_f1(pred: Sequence[str], gold: Sequence[str], common: int) -> float:
    if not pred and not gold:
        return 1.0  # both empty: a correct "no answer" (SQuAD v2 convention)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: str | Sequence[str]) -> float:
    """SQuAD token F1 (bag of normalized words), the maximum over the gold answers."""
    answers = [answers] if isinstance(answers, str) else answers
    pred = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        best = max(best, _overlap_f1(pred, gold, common))
    return best


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_tokens(text: str) -> list[str]:
    """ROUGE tokenization (as in Google's rouge-score, no stemming): lowercase runs of letters and digits."""
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F1 (beta = 1) from the token LCS, the maximum over the references."""
    references = [references] if isinstance(references, str) else references
    pred = rouge_tokens(prediction)
    return max((_overlap_f1(pred, ref, lcs_length(pred, ref)) for ref in map(rouge_tokens, references)), default=0.0)


# --- classification ------------------------------------------------------------------------------------------------


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Fraction of predictions equal to the gold label."""
    if len(y_true) != len(y_pred) or not len(y_true):
        raise ValueError(f"accuracy needs two non-empty sequences of one length, got {len(y_true)} and {len(y_pred)}")
    return float(np.mean([t == p for t, p in zip(y_true, y_pred, strict=True)]))


def macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Unweighted mean of per-label F1 over every label seen in gold or predictions (scikit-learn's ``macro``);
    a label never predicted and never gold cannot occur, one with no true positive scores 0."""
    if len(y_true) != len(y_pred) or not len(y_true):
        raise ValueError(f"macro_f1 needs two non-empty sequences of one length, got {len(y_true)} and {len(y_pred)}")
    tp, n_true, n_pred = Counter(), Counter(y_true), Counter(y_pred)
    for t, p in zip(y_true, y_pred, strict=True):
        tp[t] += t == p
    labels = set(n_true) | set(n_pred)
    return float(np.mean([2 * tp[label] / (n_true[label] + n_pred[label]) for label in labels]))
