"""Answer questions from an index with the model that built it, reusing cached key/value states.

    >>> rag = RAG(model, Index.load("notes.index", model))
    >>> result = rag.answer("How do I rotate the API key?", k=1, cache="doc")
    >>> result.text, [h.doc_id for h in result.hits]

Cache modes (GritLM, Muennighoff et al. 2024, section 4 and its rag/eval.py):

    mode        cached spans (computed when embedding)   generation runs over
    none        -                                        the whole prompt: documents, question, instruction
    doc         documents                                question + instruction
    query       question                                 documents + instruction
    doc_query   documents, then question                 instruction
    query_doc   question, then documents                 instruction

A cached span is exactly the text the embedding pass saw: ``<|embed|>\\n{document}`` for a document,
``<|user|>\\n{query instruction}\\n<|embed|>\\n{question}`` for the question. Document caches are built ahead
(``RAG.cache_documents``, or on first use; bidirectional ones while indexing, from the embedding pass itself:
``RAG.add_documents``) and kept on disk in a ``KVStore``, keyed by what they are (this model's
identity, its dtype, the cache source and the chunk's token ids: a replaced document's old states can never answer
for its new text, and the index evicts them when it replaces or deletes the document); the question's cache comes
from the embedding pass that retrieval runs anyway. Spans are joined with their keys re-rotated to their real positions
(``grit.kvcache.join_caches``), which also makes top-k > 1 documents work.

``cache_source="bidirectional"`` reuses the embedding pass's states as GritLM does (free, approximate: those states
saw the whole span in both directions); ``"causal"`` computes spans with causal attention (one more pass per span,
at index time for documents; exact: the answer equals a fresh computation of the same token sequence). The default
is the model's own ``rag_cache_source``: "bidirectional" for a model whose folder records cache-aware training
(``grit_training.json``: it learnt to answer from exactly these states), "causal" for any other, because a model not
trained to read bidirectional states derails on them: on SmolLM2-135M-Instruct, "How many parameters does
SmolLM2-135M-Instruct have?" over a retrieved document gives "... has 135 million parameters." from a causal doc
cache and repeats "The answer to the prior question is:" from a bidirectional one.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from grit.generation import Gate, SamplingParams, Stream, run_under
from grit.kvcache import CacheAttention, SpanCache
from grit.model import GritModel, sampling
from grit.rag.kvstore import CacheKey, KVStore, store_folder
from grit.rag.modes import CACHE_MODES, CacheMode, RagFormat
from grit.recompute import check_recompute_ratio, fused_suffix
from grit.text import check_text

log = logging.getLogger(__name__)
RAG_MAX_NEW_TOKENS = 64  # answers from documents are short; the default of ``max_new_tokens`` here


@dataclass
class Answer:
    text: str
    hits: list  # grit.rag.index.Hit, best first
    cache: str
    prompt_tokens: int  # tokens the model saw before answering
    cached_tokens: int  # of those, how many came from caches instead of a forward pass
    seconds: dict[str, float] = field(default_factory=dict)
    completion_tokens: int = 0
    finish_reason: str = ""  # "stop" or "length", as grit.generation.Generation


@dataclass
class CacheReport:
    """What caching a set of chunks did."""

    reused: int = 0  # chunks whose cache was already there
    computed: int = 0  # chunks computed now
    evicted: int = 0  # stale cache files removed (``cache_index``)
    tokens: int = 0  # tokens the chunks' caches hold

    def count(self, tokens: int, reused: bool) -> None:
        self.tokens += tokens
        self.reused += reused
        self.computed += not reused


@dataclass
class Layout:
    """What generation runs on: cached spans first, then the ids still to be computed."""

    spans: list[SpanCache]
    tail: list[int]

    @property
    def ids(self) -> list[int]:
        return [t for s in self.spans for t in s.ids] + self.tail


class RAG:
    """Retrieval and answering with one GRIT model.

    Args:
        model: the GritModel that built ``index``.
        index: a ``grit.rag.index.Index``.
        kv_store: where document caches live; default: in memory only (``KVStore`` in a temporary folder is
            created by ``RAG.for_index_folder`` next to a saved index).
        cache_source: "causal" (exact) or "bidirectional" (free, GritLM: the index's own embedding pass; needs a
            model trained to read those states, else it derails generation, see the module docstring); None (the
            default): ``model.rag_cache_source``, which is "bidirectional" for a model trained cache-aware.
        reposition: re-rotate joined caches to their positions (False reproduces GritLM's plain concatenation).
    """

    def __init__(
        self,
        model: GritModel,
        index,
        kv_store: KVStore | None = None,
        *,
        fmt: RagFormat | None = None,
        cache_source: CacheAttention | None = None,
        reposition: bool = True,
    ):
        cache_source = model.rag_cache_source if cache_source is None else cache_source
        if cache_source not in ("bidirectional", "causal"):
            raise ValueError(f"cache_source must be 'bidirectional' or 'causal', got {cache_source!r}")
        self.model = model
        self.index = index
        self.kv_store = kv_store
        self.fmt = fmt or RagFormat()
        self.cache_source = cache_source
        self.reposition = reposition
        self._memory: dict[CacheKey, SpanCache] = {}  # document caches when there is no store
        self._lock = threading.Lock()
        index.watch(self.evict)  # a replaced or deleted document's caches go with it

    # --- spans -------------------------------------------------------------------------------------------------

    def _compute_span(self, text: str, instruction: str, ids: list[int]) -> SpanCache:
        """A span's cache as the chosen source gives it; the bidirectional one is what ``encode_with_cache``
        returns, i.e. the index's own embedding pass."""
        if self.cache_source == "bidirectional":
            return self.model.encode_with_cache([text], instruction, max_length=self.model.context_length)[1][0]
        return self.model.span_cache(ids, "causal")

    def cache_key(self, doc_id: str, ids: list[int]) -> CacheKey:
        """What a document span's cache is: this model, its numerics (dtype and weights), the cache source and the
        exact token ids."""
        return CacheKey.of(doc_id, ids, self.model.identity.id, self.model.placement.numerics, self.cache_source)

    def _document_span(self, hit) -> tuple[SpanCache, CacheKey, bool]:
        """A hit's chunk cache, its key, and whether it was reused (from memory or the store) or computed now."""
        text, instruction = self.index.document_text(hit), self.index.config.document_instruction
        ids = self.model.embedding_ids(text, instruction)
        key = self.cache_key(hit.doc_id, ids)
        with self._lock:
            span = self.kv_store.get(key) if self.kv_store is not None else self._memory.get(key)
            if span is not None and not self.model.span_fits(span):
                log.warning("the cached KV states of %r do not fit this model's shapes; recomputing", hit.doc_id)
                if self.kv_store is not None:
                    self.kv_store.delete(key)
                span = None
        if span is not None:
            return span, key, True
        span = self._compute_span(text, instruction, ids)
        return span, self._keep(hit.doc_id, span), False

    def _keep(self, doc_id: str, span: SpanCache) -> CacheKey:
        """Store a document span's cache (in the KV store, else in memory) under the ids it really stands for."""
        key = self.cache_key(doc_id, span.ids)
        with self._lock:
            if self.kv_store is not None:
                self.kv_store.put(key, span)
            else:
                self._memory[key] = span
        return key

    def document_span(self, hit) -> SpanCache:
        """The cache of a hit's chunk: from memory, the store, or computed now (and stored)."""
        return self._document_span(hit)[0]

    def add_documents(self, documents, *, replace: bool = False) -> int:
        """``index.add`` (chunks added), and with bidirectional caches each new chunk's cache kept from that same
        embedding pass: the document caches cost no second pass (GritLM's free caches; a causal cache needs one
        more pass, made when a chunk is first asked for or by ``cache_index``)."""
        if self.cache_source != "bidirectional":
            return self.index.add(documents, replace=replace)
        if self.index.encoder is not self.model:
            raise ValueError("the index embeds with another encoder than this RAG's model: its states are not this "
                             "model's caches")  # fmt: skip
        return self.index.add(documents, replace=replace, keep_states=self._keep_chunk)

    def _keep_chunk(self, chunk, span: SpanCache) -> None:
        self._keep(chunk.doc_id, span)

    def cache_documents(self, hits, *, progress: bool = False) -> CacheReport:
        """Build the caches of these chunks ahead of time (the paper's offline step)."""
        return self._cache(hits, progress)[0]

    def cache_index(self, *, progress: bool = False) -> CacheReport:
        """Every chunk of the index cached, and every other cache in the store evicted (of documents no longer
        indexed, older texts, another model, dtype or format): ``grit rag cache``."""
        report, keys = self._cache(self.index.all_chunks(), progress)
        keep = set(keys)
        with self._lock:
            stale = self._forget(lambda k: k not in keep)
            report.evicted = self.kv_store.retain(keep) if self.kv_store is not None else stale
        return report

    def evict(self, doc_ids: list[str]) -> int:
        """Drop the caches of these documents (called by the index when they are deleted or replaced)."""
        ids = set(doc_ids)
        with self._lock:
            stale = self._forget(lambda k: k.doc_id in ids)
            return stale + (self.kv_store.evict_documents(ids) if self.kv_store is not None else 0)

    def _cache(self, hits, progress: bool) -> tuple[CacheReport, list[CacheKey]]:
        from tqdm.auto import tqdm

        report, keys = CacheReport(), []
        for hit in tqdm(hits, desc="KV cache", unit="chunk", disable=not progress):
            span, key, reused = self._document_span(hit)
            report.count(len(span), reused)
            keys.append(key)
        return report, keys

    def _forget(self, drop) -> int:
        """Remove the in-memory caches (no store) whose key ``drop`` names; how many went. Under ``_lock``."""
        stale = [k for k in self._memory if drop(k)]
        for k in stale:
            del self._memory[k]
        return len(stale)

    # --- prompt layouts ----------------------------------------------------------------------------------------

    def _chat_ids(self, content: str, after_cache: bool) -> list[int]:
        """A user turn + assistant opening in the model's chat format. After cached spans it starts with a newline
        (GritLM's cache formats do) and no special tokens are added (the spans hold them)."""
        before = "\n" if after_cache else ""
        return self.model.chat_ids([{"role": "user", "content": content}], before=before, after=self.fmt.answer_prefix)

    def layout(self, question: str, hits, cache: CacheMode, query_span: SpanCache | None) -> Layout:
        docs = self.fmt.doc_separator.join(self.index.document_text(h) for h in hits)
        if cache == "none":
            return Layout([], self._chat_ids(self.fmt.docs_then_question.format(docs=docs, question=question), False))
        doc_spans = [self.document_span(h) for h in hits] if "doc" in cache else []
        if cache == "doc":
            return Layout(doc_spans, self._chat_ids(self.fmt.after_docs.format(question=question), True))
        if cache == "query":
            return Layout([query_span], self._chat_ids(self.fmt.after_question.format(docs=docs), True))
        if cache == "doc_query":
            return Layout([*doc_spans, query_span], self._chat_ids(self.fmt.after_docs_question, True))
        return Layout([query_span, *doc_spans], self._chat_ids(self.fmt.after_question_docs, True))

    # --- answering ---------------------------------------------------------------------------------------------

    def retrieve(self, question: str, k: int, cache: CacheMode):
        """Hits for the question, and the question's cache when the mode uses it (from the same pass)."""
        instruction, limit = self.index.config.query_instruction, self.model.context_length
        if "query" not in cache:  # the whole question is embedded in every mode, so timings compare fairly
            return self.index.search_vectors(self.model.encode(question, instruction, max_length=limit), k), None
        vectors, spans = self.model.encode_with_cache([question], instruction, max_length=limit)
        if self.cache_source == "causal":
            spans = [self.model.span_cache(spans[0].ids, "causal")]
        return self.index.search_vectors(vectors[0], k), spans[0]

    def question_limit(self, max_new_tokens: int) -> int:
        """The most tokens a question may have: half of what the context holds beside the answer."""
        return (self.model.context_length - max_new_tokens) // 2

    def question_tokens(self, question: str) -> int:
        return self.model.token_count(question)

    def fit_question(self, question: str, max_new_tokens: int) -> str:
        """The question cut to half of what the context holds next to the answer: the other half is for the
        documents and the format around them (documents that still do not fit are dropped in ``prepare``)."""
        ids = self.model.token_ids(question)
        keep = self.question_limit(max_new_tokens)
        if keep < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room in the {self.model.context_length}-token context"
            )
        if len(ids) <= keep:
            return question
        log.warning("the question has %d tokens; cut to %d to leave room for documents and answer", len(ids), keep)
        return self.model.decode(ids[:keep])

    def prepare(self, question: str, k: int, cache: CacheMode, max_new_tokens: int):
        if cache not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {cache!r}; expected one of {', '.join(CACHE_MODES)}")
        if not isinstance(question, str):
            raise TypeError(f"the question must be a string, got {type(question).__name__}")
        if not question.strip():
            raise ValueError("the question is empty")
        check_text(question, "the question")
        if self.index.num_chunks == 0:
            raise ValueError("the index holds no documents; add some with `grit index add`")
        question = self.fit_question(question, max_new_tokens)
        seconds = {}
        start = time.perf_counter()
        hits, query_span = self.retrieve(question, k, cache)
        seconds["retrieve"] = time.perf_counter() - start
        start = time.perf_counter()
        layout = self.layout(question, hits, cache, query_span)
        while len(layout.ids) + max_new_tokens > self.model.context_length and len(hits) > 1:
            log.warning("prompt exceeds the %d-token context; dropping document %r", self.model.context_length,
                        hits[-1].doc_id)  # fmt: skip
            hits = hits[:-1]
            layout = self.layout(question, hits, cache, query_span)
        if len(layout.ids) + max_new_tokens > self.model.context_length:
            raise ValueError(
                f"question and document take {len(layout.ids)} tokens; with max_new_tokens={max_new_tokens} that "
                f"exceeds the model's context of {self.model.context_length} tokens"
            )
        seconds["prepare"] = time.perf_counter() - start
        return hits, layout, seconds

    def _generate_args(self, question: str, k: int, cache: CacheMode, max_new_tokens: int, gate: Gate | None,
                       recompute_ratio: float = 0.0):  # fmt: skip
        """Hits, layout and timings of ``prepare``, with the prompt ids (1, T) and the joined cache (or None) that
        generation starts from; under ``gate`` when the model is shared."""
        check_recompute_ratio(recompute_ratio)  # before retrieval: refused in every cache mode, not only cached ones
        with gate.hold() if gate is not None else nullcontext():
            return run_under(gate, self._prepared_cache, question, k, cache, max_new_tokens, recompute_ratio)

    def _prepared_cache(self, question: str, k: int, cache: CacheMode, max_new_tokens: int, recompute_ratio: float):
        hits, layout, seconds = self.prepare(question, k, cache, max_new_tokens)
        ids = self.model.as_ids(layout.ids)
        start = time.perf_counter()
        past = None
        if layout.spans:
            fused = fused_suffix(layout.tail, recompute_ratio)
            past = self.model.joined_cache(layout.spans, self.reposition, recompute_ratio, fused)
        seconds["join"] = time.perf_counter() - start
        return hits, layout, seconds, ids, past

    def answer(
        self,
        question: str,
        k: int = 1,
        cache: CacheMode = "none",
        params: SamplingParams | None = None,
        *,
        gate: Gate | None = None,
        recompute_ratio: float = 0.0,
        **overrides,
    ) -> Answer:
        """Retrieve ``k`` chunks and answer from them. Returns the text, the hits with scores, and timings.
        ``params`` and keyword overrides as ``GritModel.generate`` (``max_new_tokens`` defaults to 64 here).
        ``gate``: the model's lock when it is shared (a server); held for retrieval, offered after each token.
        ``recompute_ratio``: the share of cached tokens recomputed across the joined spans (``grit.recompute``)."""
        params = sampling(params or SamplingParams(RAG_MAX_NEW_TOKENS), overrides)
        hits, layout, seconds, ids, past = self._generate_args(question, k, cache, params.max_new_tokens, gate,
                                                               recompute_ratio)  # fmt: skip
        start = time.perf_counter()
        result = self.model.complete(ids, params, cache=past, gate=gate)
        seconds["generate"] = time.perf_counter() - start
        cached = sum(len(s) for s in layout.spans)
        return Answer(result.text, hits, cache, len(layout.ids), cached, seconds, result.completion_tokens,
                      result.finish_reason)  # fmt: skip

    def stream(
        self,
        question: str,
        k: int = 1,
        cache: CacheMode = "none",
        params: SamplingParams | None = None,
        *,
        gate: Gate | None = None,
        cancel: threading.Event | None = None,
        recompute_ratio: float = 0.0,
        **overrides,
    ) -> tuple[list, Stream]:
        """The hits, and the answer as a ``Stream`` (``.pieces`` as they are decoded, ``.result`` when they end)."""
        params = sampling(params or SamplingParams(RAG_MAX_NEW_TOKENS), overrides)
        hits, _, _, ids, past = self._generate_args(question, k, cache, params.max_new_tokens, gate, recompute_ratio)
        return hits, self.model.stream(ids, params, cache=past, cancel=cancel, gate=gate)

    @classmethod
    def open(cls, folder: Path, model: GritModel, cache_source: CacheAttention | None = None) -> RAG:
        """A saved index with its on-disk KV store (``folder/kv-<source>``); ``model`` must be the index's model;
        ``cache_source`` None: the model's ``rag_cache_source``."""
        from grit.rag.index import Index

        cache_source = model.rag_cache_source if cache_source is None else cache_source
        index = Index.load(folder, model)
        return cls(model, index, KVStore(store_folder(folder, cache_source)), cache_source=cache_source)
