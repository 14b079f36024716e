"""Embedding tasks: STS (Spearman), retrieval (nDCG@10, recall@100, MRR@10), classification (logistic regression).

Each follows the MTEB protocol for its kind on the shared data sets, with GritLM's instructions
(``grit.instructions``): queries instructed, documents not; symmetric tasks instruct every text.

Example:
    >>> task = STSTask("stsb", Path("../shared/data/sts/stsb-test.jsonl"), limit=100)
    >>> task.evaluate(GritModel.load()).metrics
    {'spearman': 0.61..., 'pearson': 0.58...}
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from grit import instructions
from grit.embedding import normalize_rows
from grit.eval import data, metrics
from grit.eval.cache import EmbeddingCache
from grit.eval.encoders import Encoder, Retriever
from grit.eval.tasks import Scores, check_limit, encode, min_limit

log = logging.getLogger(__name__)


@dataclass
class STSTask:
    """Spearman correlation between the cosine similarity of each pair and its gold score (MTEB's main STS score)."""

    name: str
    path: Path
    instruction: str = instructions.STS
    limit: int | None = None  # pairs

    def __post_init__(self) -> None:
        check_limit(self.limit)

    def supports(self, model: Any) -> bool:
        return isinstance(model, Encoder)

    def limited(self, n: int | None) -> STSTask:
        return dataclasses.replace(self, limit=min_limit(self.limit, n))

    def pair_cosines(self, model: Any) -> tuple[np.ndarray, np.ndarray]:
        """(n,) cosine of each scored pair under ``model`` and (n,) its gold score: what ``evaluate`` correlates
        (tools/sts_paired_bootstrap.py resamples them)."""
        pairs = data.sample(data.read_sts(self.path), self.limit)
        a = normalize_rows(encode(model, [p.sentence1 for p in pairs], self.instruction))
        b = normalize_rows(encode(model, [p.sentence2 for p in pairs], self.instruction))
        return np.sum(a * b, axis=1), np.array([p.score for p in pairs], dtype=np.float64)

    def evaluate(self, model: Any, cache: EmbeddingCache | None = None) -> Scores:
        cosine, gold = self.pair_cosines(model)
        return Scores(
            {"spearman": metrics.spearman(cosine, gold), "pearson": metrics.pearson(cosine, gold)}, len(gold)
        )


@dataclass
class RetrievalTask:
    """Exact search over a BEIR folder: cosine of normalized embeddings (or a ``Retriever``'s own scores), top 100.

    Only queries with at least one relevant judgment are scored, as in BEIR. ``corpus_limit`` shrinks the corpus to
    the documents judged for the kept queries plus a seeded sample of the others: quicker, but easier than the full
    corpus, so compare such numbers only with runs at the same limits.
    """

    name: str
    folder: Path
    instruction: instructions.Instruction  # {"query": ..., "corpus": ""} for GritLM-style asymmetric retrieval
    limit: int | None = None  # queries
    corpus_limit: int | None = None  # documents
    split: str = "test"
    top_k: int = 100

    def __post_init__(self) -> None:
        check_limit(self.limit)
        check_limit(self.corpus_limit)

    def supports(self, model: Any) -> bool:
        return isinstance(model, Encoder | Retriever)

    def limited(self, n: int | None) -> RetrievalTask:
        # The corpus shrinks with the queries (20 documents per query) so a --limit run stays quick.
        return dataclasses.replace(
            self,
            limit=min_limit(self.limit, n),
            corpus_limit=min_limit(self.corpus_limit, None if n is None else 20 * n),
        )

    def load(self) -> tuple[list[str], list[str], list[str], list[str], list[dict[str, int]]]:
        """Query ids, query texts, doc ids, doc texts and per-query qrels, after limits and empty-doc removal."""
        ds = data.read_beir(self.folder, self.split)
        judged = [q for q in ds.queries if any(r > 0 for r in ds.qrels.get(q, {}).values())]
        if len(judged) < len(ds.queries):
            log.info(
                "%s: %d of %d queries have no relevant document and are not scored (as in BEIR)",
                self.name,
                len(ds.queries) - len(judged),
                len(ds.queries),
            )
        qids = data.sample(judged, self.limit)
        doc_ids = [d for d in ds.corpus if ds.doc_text(d)]
        if len(doc_ids) < len(ds.corpus):
            log.warning("%s: %d empty documents left out of the corpus", self.name, len(ds.corpus) - len(doc_ids))
        if self.corpus_limit is not None and self.corpus_limit < len(doc_ids):
            needed = {d for q in qids for d in ds.qrels[q]}
            room = self.corpus_limit - len(needed)  # judged documents are always kept, even past the limit
            others = data.sample([d for d in doc_ids if d not in needed], room) if room > 0 else []
            keep = needed | set(others)
            doc_ids = [d for d in doc_ids if d in keep]
        return (
            qids,
            [ds.queries[q] for q in qids],
            doc_ids,
            [ds.doc_text(d) for d in doc_ids],
            [ds.qrels[q] for q in qids],
        )

    def scores(self, model: Any, queries: list[str], docs: list[str], cache: EmbeddingCache | None) -> np.ndarray:
        """(n_queries, n_docs) relevance scores: a Retriever's own, else cosine similarity of embeddings."""
        if isinstance(model, Retriever):
            model.index(docs)
            return np.asarray(model.score(queries), dtype=np.float32)
        d = normalize_rows(encode(model, docs, instructions.side(self.instruction, "corpus"), cache))
        q = normalize_rows(encode(model, queries, instructions.side(self.instruction, "query")))
        return q @ d.T  # (n_queries, dim) x (dim, n_docs) -> (n_queries, n_docs)

    def evaluate(self, model: Any, cache: EmbeddingCache | None = None) -> Scores:
        qids, queries, doc_ids, docs, qrels = self.load()
        scores = self.scores(model, queries, docs, cache)
        # Stable sort of -score: ties go to the earlier corpus position, so runs are reproducible.
        top = np.argsort(-scores, axis=1, kind="stable")[:, : self.top_k]  # (n_queries, top_k)
        ranked = [[doc_ids[i] for i in row] for row in top]
        values = {
            "ndcg@10": metrics.ndcg_at_k(ranked, qrels, 10),
            "recall@100": metrics.recall_at_k(ranked, qrels, 100),
            "mrr@10": metrics.mrr_at_k(ranked, qrels, 10),
        }
        return Scores(values, len(qids), details={"corpus_size": len(doc_ids)})


@dataclass
class ClassificationTask:
    """MTEB's classification protocol: in each of ``n_experiments`` runs, undersample the training split to
    ``samples_per_label`` rows per label, fit a logistic regression on their embeddings and score the test split;
    report the mean. The undersampling is MTEB's (numpy RandomState(42) shuffles, carried over between runs) and
    lbfgs is deterministic, so a rerun gives the same numbers. ``samples_per_label=None``: one run on every row.
    """

    name: str
    train: Path
    test: Path
    instruction: str = ""
    limit: int | None = None  # test texts
    train_limit: int | None = None  # training rows to undersample from
    samples_per_label: int | None = 8  # MTEB's default (Banking77 uses it)
    n_experiments: int = 10
    max_iter: int = 1000  # MTEB uses 100, which stops before convergence on 77 classes

    def __post_init__(self) -> None:
        check_limit(self.limit)
        check_limit(self.train_limit)
        check_limit(self.samples_per_label)
        check_limit(self.n_experiments)

    def supports(self, model: Any) -> bool:
        return isinstance(model, Encoder)

    def limited(self, n: int | None) -> ClassificationTask:
        # The training pool shrinks with the test set (4 training rows per test text) so a --limit run stays quick.
        return dataclasses.replace(
            self,
            limit=min_limit(self.limit, n),
            train_limit=min_limit(self.train_limit, None if n is None else 4 * n),
        )

    def experiments(self, labels: list[str]) -> list[list[int]]:
        """Training row indices for each experiment."""
        if self.samples_per_label is None:
            return [list(range(len(labels)))]
        order, runs = list(range(len(labels))), []
        for _ in range(self.n_experiments):
            np.random.RandomState(42).shuffle(order)  # as mteb: a fresh seed each time, on the last run's order
            taken: Counter[str] = Counter()
            chosen = []
            for i in order:
                if taken[labels[i]] < self.samples_per_label:
                    taken[labels[i]] += 1
                    chosen.append(i)
            runs.append(chosen)
        return runs

    def evaluate(self, model: Any, cache: EmbeddingCache | None = None) -> Scores:
        from sklearn.linear_model import LogisticRegression

        train = data.sample(data.read_classification(self.train), self.train_limit)
        test = data.sample(data.read_classification(self.test), self.limit)
        labels = [x.label for x in train]
        runs = self.experiments(labels)
        used = sorted(set().union(*runs))  # encode each training row once, whatever runs it is in
        if len({labels[i] for i in used}) < 2:
            raise ValueError(f"{self.name}: the training rows hold fewer than 2 labels")
        vectors = dict(zip(used, encode(model, [train[i].text for i in used], self.instruction), strict=True))
        x_test = encode(model, [x.text for x in test], self.instruction)
        gold = [x.label for x in test]
        accuracies, f1s = [], []
        for run in tqdm(runs, desc=self.name, unit="fit", disable=len(runs) < 2):
            clf = LogisticRegression(max_iter=self.max_iter, random_state=0)
            clf.fit(np.stack([vectors[i] for i in run]), [labels[i] for i in run])
            predicted = clf.predict(x_test).tolist()
            accuracies.append(metrics.accuracy(gold, predicted))
            f1s.append(metrics.macro_f1(gold, predicted))
        values = {"accuracy": float(np.mean(accuracies)), "macro_f1": float(np.mean(f1s))}
        details = {"train_encoded": len(used), "train_per_run": len(runs[0]), "labels": len(set(labels))}
        return Scores(values, len(test), details=details)
