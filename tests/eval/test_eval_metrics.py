"""Each metric against a value worked out by hand (the arithmetic is in the comments), then against the reference
implementation where one is installed (scipy, scikit-learn, pytrec_eval)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grit.eval import metrics


def test_rankdata_averages_ties():
    # sorted: 10 (rank 1), 20 20 (ranks 2, 3 -> 2.5 each), 30 (rank 4)
    np.testing.assert_array_equal(metrics.rankdata([20, 10, 30, 20]), [2.5, 1, 4, 2.5])


def test_spearman_with_ties_by_hand():
    x = [1, 2, 2, 3]  # ranks 1, 2.5, 2.5, 4
    y = [1, 3, 2, 4]  # ranks 1, 3, 2, 4
    # centred (mean 2.5): rx = -1.5, 0, 0, 1.5; ry = -1.5, 0.5, -0.5, 1.5
    # sum rx*ry = 2.25 + 0 + 0 + 2.25 = 4.5; sum rx^2 = 4.5; sum ry^2 = 2.25 + 0.25 + 0.25 + 2.25 = 5
    assert metrics.spearman(x, y) == pytest.approx(4.5 / math.sqrt(4.5 * 5))  # 0.948683


def test_spearman_is_rank_based_and_symmetric():
    assert metrics.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    x, y = [0.3, 0.1, 0.1, 0.9, 0.5], [2, 1, 3, 5, 4]
    assert metrics.spearman(x, y) == pytest.approx(metrics.spearman(y, x))


def test_pearson_by_hand_and_constant_input():
    # x centred -1, 0, 1; y = 1, 3, 2 centred -1, 1, 0: sum xy = 1, sum x^2 = 2, sum y^2 = 2 -> 0.5
    assert metrics.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3])) and math.isnan(metrics.spearman([1], [2]))
    with pytest.raises(ValueError, match="same length"):
        metrics.pearson([1, 2], [1, 2, 3])


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)  # many ties in x
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_ndcg_at_10_graded_by_hand():
    qrels = {"a": 3, "b": 2, "c": 1, "z": 0}
    ranked = ["x", "b", "a", "c", "z"]
    # DCG = 0/log2(2) + 2/log2(3) + 3/log2(4) + 1/log2(5) + 0 = 1.261860 + 1.5 + 0.430677 = 3.192536
    # IDCG = 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.261860 + 0.5 = 4.761860
    expected = (2 / math.log2(3) + 3 / 2 + 1 / math.log2(5)) / (3 + 2 / math.log2(3) + 0.5)
    assert metrics.ndcg_at_k([ranked], [qrels], k=10) == pytest.approx(expected)  # 0.670439
    assert expected == pytest.approx(0.670439, abs=1e-6)


def test_ndcg_cut_and_ideal_from_all_judgments():
    qrels = {"a": 1, "b": 1, "c": 1}
    # top 2 = [a, x]: DCG = 1; ideal at k=2 counts two relevant docs: 1 + 1/log2(3) = 1.630930 (c is never retrieved)
    assert metrics.ndcg_at_k([["a", "x", "b"]], [qrels], k=2) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # the mean over queries; a query with nothing relevant scores 0
    assert metrics.ndcg_at_k([["a"], ["a"]], [{"a": 2}, {"a": 0}], k=10) == pytest.approx(0.5)


def test_mrr_by_hand():
    ranked = [["x", "a"], ["b", "a"], ["x", "y"], ["x"] * 10 + ["a"]]
    qrels = [{"a": 1}, {"a": 1, "b": 2}, {"a": 1}, {"a": 1}]
    # 1/2, 1/1, 0 (none found), 0 (found at rank 11 > k) -> mean 1.5 / 4
    assert metrics.mrr_at_k(ranked, qrels, k=10) == pytest.approx(0.375)


def test_recall_by_hand():
    ranked = [["a", "x", "b"], ["y"]]
    qrels = [{"a": 1, "b": 3, "c": 2, "d": 0}, {"y": 1}]
    # query 1: 2 of 3 relevant (d is judged non-relevant) within k=3; at k=1 only a: 1/3. query 2: 1/1.
    assert metrics.recall_at_k(ranked, qrels, k=3) == pytest.approx((2 / 3 + 1) / 2)
    assert metrics.recall_at_k(ranked, qrels, k=1) == pytest.approx((1 / 3 + 1) / 2)


def test_ranking_metrics_match_pytrec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(1)
    docs = [f"d{i}" for i in range(30)]
    qrels = {f"q{q}": {d: int(rng.integers(0, 4)) for d in rng.choice(docs, 8, replace=False)} for q in range(5)}
    # distinct scores: trec_eval breaks ties by doc id, we by corpus order
    run = {q: {d: float(s) for d, s in zip(docs, rng.permutation(len(docs)), strict=True)} for q in qrels}
    ranked = [sorted(run[q], key=lambda d: -run[q][d]) for q in qrels]
    expected = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recip_rank"}).evaluate(run)
    per_query = [qrels[q] for q in qrels]
    assert metrics.ndcg_at_k(ranked, per_query, 10) == pytest.approx(
        np.mean([v["ndcg_cut_10"] for v in expected.values()])
    )
    assert metrics.recall_at_k(ranked, per_query, 10) == pytest.approx(
        np.mean([v["recall_10"] for v in expected.values()])
    )
    assert metrics.mrr_at_k(ranked, per_query, 30) == pytest.approx(
        np.mean([v["recip_rank"] for v in expected.values()])
    )


def test_squad_normalization_and_em():
    assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert metrics.normalize_answer("An apple, a pear") == "apple pear"
    assert metrics.exact_match("the Eiffel Tower.", ["Louvre", "Eiffel tower"]) == 1.0
    assert metrics.exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_token_f1_by_hand():
    # pred "cat sat on mat" (the dropped), gold "cat sat" -> common 2, P = 2/4, R = 2/2, F1 = 2*0.5*1/1.5 = 2/3
    assert metrics.token_f1("The cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    assert metrics.token_f1("dog", ["cat", "dog"]) == 1.0  # best over answers
    assert metrics.token_f1("dog", "cat") == 0.0
    assert metrics.token_f1("", "") == 1.0


def test_rouge_l_by_hand():
    # LCS("a b c d e", "a c e f") = "a c e" = 3; P = 3/5, R = 3/4, F1 = 2*0.6*0.75/1.35 = 0.666667
    assert metrics.lcs_length("abcde", "acef") == 3
    assert metrics.rouge_l("A b, c d e", "a c e f") == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert metrics.rouge_l("x", ["y", "x"]) == 1.0


def test_accuracy_and_macro_f1_by_hand():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # F1 = 2TP / (n_true + n_pred): a = 4/5, b = 2/4, c = 2/3 -> mean 0.655556
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((4 / 5 + 2 / 4 + 2 / 3) / 3)
    # a label only ever predicted counts as 0
    assert metrics.macro_f1(["a", "a"], ["a", "z"]) == pytest.approx((2 / 3 + 0) / 2)


def test_macro_f1_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    y_true, y_pred = rng.integers(0, 6, 200).tolist(), rng.integers(0, 7, 200).tolist()
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"))
