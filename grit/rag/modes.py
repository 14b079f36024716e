"""The words of RAG caching, without torch: the cache modes (which spans of a prompt come from cached states), the
cache sources (which pass computed them) and the wording of the prompt around cached spans. The command line and the
server's request schemas validate against these; grit.rag.answer, grit.kvcache and the trainer's cache-aware rows
(grit.train.data) use the same types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

CacheMode = Literal["none", "doc", "query", "doc_query", "query_doc"]
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
CacheSource = Literal["bidirectional", "causal"]  # grit.kvcache.CacheAttention
CACHE_SOURCES: tuple[str, ...] = get_args(CacheSource)


@dataclass(frozen=True)
class RagFormat:
    """The user turns around cached spans (GritLM's wording); rendered with the model's chat format."""

    docs_then_question: str = (
        "{docs}\n\n{question}\n\nAnswer the prior query while optionally using the context prior to it"
    )
    after_docs: str = "{question}\n\nAnswer the prior query while optionally using the context prior to it"
    after_question: str = "{docs}\n\nOptionally using the prior context answer the query prior to it"
    after_docs_question: str = "Answer the prior query while optionally using the context prior to it"
    after_question_docs: str = "Optionally using the prior context answer the query prior to it"
    doc_separator: str = "\n\n"
    answer_prefix: str = ""  # text the answer starts with (GritLM's QA eval: "The answer is")
