"""The words of RAG caching, without torch: the cache modes (which spans of a prompt come from cached states) and
the cache sources (which pass computed them). The command line and the server's request schemas validate against
these; grit.rag.answer and grit.kvcache use the same types."""

from __future__ import annotations

from typing import Literal, get_args

CacheMode = Literal["none", "doc", "query", "doc_query", "query_doc"]
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
CacheSource = Literal["bidirectional", "causal"]  # grit.kvcache.CacheAttention
CACHE_SOURCES: tuple[str, ...] = get_args(CacheSource)
