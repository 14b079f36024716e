"""RAG task: retrieve passages with the model's own embeddings, answer from them in every cache mode.

    RagQATask   a QA set whose passages form the corpus; retrieval recall@k of the gold passage (of the supporting
                paragraphs, for multi-document sets: HotpotQA), then answer EM / token F1 per cache mode and cache
                source, agreement with the uncached answer, seconds per answer

This is where the paper's caching trade-off is measured on answers rather than latency: ``none`` computes everything
fresh; the other modes reuse key/value states, from a causal pass (exact for the same tokens, so differences come
only from the prompt layout) or from the bidirectional embedding pass (free, but states the model never saw during
generative training). "agree" is the share of questions whose answer equals the ``none`` answer exactly,
"agree_f1" the mean token F1 between the two answers (partial agreement: the prompt layouts differ between modes,
so even an exact cache rarely gives the very same words).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from grit.eval import data, metrics
from grit.eval.cache import EmbeddingCache
from grit.eval.generative_tasks import first_line, mean
from grit.eval.tasks import Scores, check_limit, min_limit
from grit.rag.answer import CACHE_MODES, RAG, RagFormat
from grit.rag.chunking import ChunkConfig
from grit.rag.documents import Document
from grit.rag.index import Index, IndexConfig

log = logging.getLogger(__name__)

REPLY = " Reply with the answer only: the shortest span of the context that answers it."


def recall(wanted: list[str], got: list[str]) -> float:
    return sum(w in got for w in wanted) / len(wanted)


def qa_format() -> RagFormat:
    """GritLM's RAG prompts, each asking for an extractive answer (so exact match means something)."""
    base = RagFormat()
    fields = ("docs_then_question", "after_docs", "after_question", "after_docs_question", "after_question_docs")
    return dataclasses.replace(base, **{f: getattr(base, f) + "." + REPLY for f in fields})


def corpus(rows: list[data.QaExample], everything: list[data.QaExample], size: int | None) -> list[Document]:
    """The distinct documents of ``rows`` (their passage, or all their paragraphs: the gold ones and each row's own
    distractors), then other rows' documents of the file in order, up to ``size`` documents in all (distractors make
    retrieval a real choice). Ids are ``p<n>`` in order of first appearance."""
    seen: dict[str, Document] = {}

    def add(ex: data.QaExample) -> None:
        for text in ex.documents:
            if text not in seen:
                seen[text] = Document(f"p{len(seen)}", text, ex.title if len(ex.documents) == 1 else "")

    for ex in rows:
        add(ex)
    for ex in everything:
        if size is not None and len(seen) >= size:
            break
        add(ex)
    return list(seen.values())


@dataclass
class RagQATask:
    name: str
    path: Path
    limit: int | None = None  # questions
    heldout_only: bool = False  # ask only the questions grit.splits keeps out of training; any passage may be indexed
    corpus_size: int | None = None  # passages indexed: the questions' own plus distractors (None: all in the file)
    k: int = 1  # passages an answer is generated from
    recall_at: tuple[int, ...] = (1, 5, 10)
    modes: tuple[str, ...] = CACHE_MODES
    cache_sources: tuple[str, ...] = ("causal", "bidirectional")
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        check_limit(self.limit)
        self.recall_at, self.modes, self.cache_sources = (
            tuple(self.recall_at),
            tuple(self.modes),
            tuple(self.cache_sources),
        )
        if unknown := set(self.modes) - set(CACHE_MODES):
            raise ValueError(f"unknown cache modes {sorted(unknown)}; expected some of {', '.join(CACHE_MODES)}")
        if unknown := set(self.cache_sources) - {"causal", "bidirectional"}:
            raise ValueError(f"unknown cache sources {sorted(unknown)}; expected causal and/or bidirectional")

    def supports(self, model: Any) -> bool:
        # Needs one model that embeds, generates and exposes its key/value states: a GritModel.
        return all(hasattr(model, a) for a in ("encode_with_cache", "token_count", "complete", "context_length"))

    def limited(self, n: int | None) -> RagQATask:
        return dataclasses.replace(self, limit=min_limit(self.limit, n))

    def evaluate(self, model: Any, cache: EmbeddingCache | None = None) -> Scores:
        everything = data.read_rag(self.path)
        rows = data.sample(data.held_out_examples(everything) if self.heldout_only else everything, self.limit)
        docs = corpus(rows, everything, self.corpus_size)
        gold = {d.text: d.id for d in docs}
        longest = max(model.token_count(d.text) for d in docs)
        config = IndexConfig(
            chunking=ChunkConfig(chunk_tokens=longest + 8, overlap_tokens=0), max_length=model.context_length
        )  # fmt: skip  (one chunk per passage)
        index = Index.build(docs, model, config)
        values: dict[str, float] = {}

        ranked = index.search([r.question for r in rows], k=max(self.recall_at), per_document=True)
        for at in self.recall_at:  # the share of a question's gold documents in its top `at` (one, or several)
            found = [recall([gold[t] for t in r.gold], [h.doc_id for h in hits[:at]])
                     for r, hits in zip(rows, ranked, strict=True)]  # fmt: skip
            values[f"recall@{at}"] = mean(found)

        fmt = qa_format()
        reference: list[str] | None = None  # the `none` answers
        for source in self.cache_sources:
            rag = RAG(model, index, fmt=fmt, cache_source=source)
            for mode in self.modes:
                if mode == "none" and reference is not None:
                    continue  # `none` uses no cache: the same answers for every source
                answers, seconds = [], []
                for r in tqdm(rows, desc=f"{self.name} {mode}/{source}", unit="question"):
                    start = time.perf_counter()
                    answers.append(
                        first_line(rag.answer(r.question, self.k, mode, max_new_tokens=self.max_new_tokens).text)
                    )
                    seconds.append(time.perf_counter() - start)
                key = "none" if mode == "none" else f"{mode}/{source}"
                values[f"{key}/exact_match"] = mean(
                    [metrics.exact_match(a, r.answers) for a, r in zip(answers, rows, strict=True)]
                )
                values[f"{key}/f1"] = mean(
                    [metrics.token_f1(a, r.answers) for a, r in zip(answers, rows, strict=True)]
                )
                values[f"{key}/seconds"] = mean(seconds)
                if mode == "none":
                    reference = answers
                elif reference is not None:
                    pairs = list(zip(answers, reference, strict=True))
                    values[f"{key}/agree"] = mean([float(a == b) for a, b in pairs])
                    values[f"{key}/agree_f1"] = mean([metrics.token_f1(a, b) for a, b in pairs])
        details = {"questions": len(rows), "corpus": len(docs), "k": self.k}
        return Scores(values, len(rows), details=details)
