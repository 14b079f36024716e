"""The document index for RAG: documents -> token chunks -> normalized vectors in FAISS -> search by question.

Example:
    >>> model = GritModel.load()
    >>> index = Index.build(load_documents("notes/"), model, IndexConfig(store=StoreConfig(quantize="int8")))
    >>> index.search("How do I rotate the API key?", k=3)[0].doc_id
    'ops/keys.md'
    >>> index.save("notes.index"); index = Index.load("notes.index", model)

Queries and documents are embedded with separate instructions, as GritLM does for retrieval: queries get
``DEFAULT_QUERY_INSTRUCTION``, documents none. Scores are cosine similarities (vectors are L2-normalized here, so
any encoder works).

Choices worth knowing:
- ``delete`` removes chunks from FAISS in place for flat and IVF (IndexIDMap2 / IVF ids) and rebuilds the HNSW
  graph from the stored vectors (HNSW cannot drop nodes), which costs a full graph build.
- Searching an empty index (nothing added yet, or everything deleted) returns no hits rather than raising: an empty
  result is the true answer, and a server should not fail because its corpus is empty.
- The folder written by ``save`` holds manifest.json, documents.jsonl (full texts: a hit's text is a slice of its
  document), chunks.jsonl (id, document, number, span) and vectors.faiss. It is written under a temporary name and
  renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from grit.instructions import DEFAULT_QUERY_INSTRUCTION
from grit.jsonl import DataFormatError, read_jsonl
from grit.loading import write_folder_atomically
from grit.rag import kvstore
from grit.rag import manifest as mf
from grit.rag.chunking import Chunk, ChunkConfig, chunk_documents
from grit.rag.documents import Document, DocumentError
from grit.rag.store import StoreConfig, VectorStore
from grit.text import check_text

if TYPE_CHECKING:
    from grit.kvcache import SpanCache

log = logging.getLogger(__name__)

VECTORS, DOCUMENTS, CHUNKS = "vectors.faiss", "documents.jsonl", "chunks.jsonl"
STATES_BATCH = 32  # chunks embedded per encode_with_cache call when their states are kept


class UnknownDocumentError(KeyError, ValueError):
    """``delete`` was given ids the index does not hold. A KeyError for dict-like use, a ValueError for the CLI."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class IndexConfig:
    chunking: ChunkConfig = field(default_factory=ChunkConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    query_instruction: str = DEFAULT_QUERY_INSTRUCTION
    document_instruction: str = ""  # GritLM embeds documents without an instruction
    title_in_embedding: bool = True  # embed "title text", as GritLM and BEIR do; the hit text stays the bare chunk
    max_length: int | None = None  # tokens per embedded chunk, passed to encode (None: the encoder's default, 512)


@dataclass(frozen=True)
class Hit:
    doc_id: str
    number: int  # the chunk's position in its document
    score: float  # cosine similarity (approximate for int8 / float16 storage)
    text: str  # the chunk: document text[start:end]
    title: str
    start: int
    end: int


class Index:
    """Chunks of documents with their vectors. Build with ``Index.build`` or ``Index.load``.

    ``encoder`` is anything with ``encode(texts, instruction=...) -> (n, d) array`` that has a ``path`` (a model
    folder, like GritModel) or a ``model_id`` string. ``tokenizer`` (default ``encoder.tokenizer``, a Hugging Face
    fast tokenizer) counts chunk tokens.
    """

    def __init__(self, encoder, config: IndexConfig | None = None, *, tokenizer=None):
        self.encoder = encoder
        self.config = config or IndexConfig()
        self.tokenizer = tokenizer if tokenizer is not None else getattr(encoder, "tokenizer", None)
        self.model = mf.encoder_identity(encoder) if encoder is not None else None
        self.placements: list[dict] = []  # where this index's vectors were computed (manifest.json "placements")
        self.store = VectorStore(self.config.store)
        self.documents: dict[str, Document] = {}
        self.chunks: dict[int, Chunk] = {}  # FAISS id -> chunk
        self._rows: dict[str, list[int]] = {}  # document id -> FAISS ids of its chunks
        self._next_id = 0
        # Documents deleted or replaced since this index was built or loaded: ``save`` carries over the KV caches of
        # the others only. Watchers (a RAG's cache eviction, see ``watch``) hear of them at once.
        self.changed_documents: set[str] = set()
        self._watchers: list[weakref.WeakMethod] = []

    @classmethod
    def build(
        cls, documents: Iterable[Document], encoder, config: IndexConfig | None = None, *, tokenizer=None
    ) -> Index:
        """A new index holding ``documents``."""
        index = cls(encoder, config, tokenizer=tokenizer)
        index.add(documents)
        return index

    @property
    def num_documents(self) -> int:
        return len(self.documents)

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    @property
    def kind(self) -> str:
        """The FAISS index kind in use: the configured one, or "flat" after an IVF fallback."""
        return self.store.kind

    # --- changing ----------------------------------------------------------------------------------------------

    def add(
        self,
        documents: Iterable[Document],
        *,
        replace: bool = False,
        keep_states: Callable[[Chunk, SpanCache], object] | None = None,
    ) -> int:
        """Chunk, embed and add documents; returns the number of chunks added.

        A document id already in the index raises ``ValueError`` unless ``replace=True``, which swaps the old
        version out (watchers hear of it before the new version is embedded). The index is unchanged when
        embedding fails.

        ``keep_states(chunk, span)``: embed with the encoder's ``encode_with_cache`` and hand the caller each new
        chunk's key/value states from that very pass, in batches as they are computed: a RAG keeps them as the
        chunks' bidirectional caches, which then cost no second pass (``RAG.add_documents``). The caller holds
        the new versions' caches, so ``save`` carries them over for replaced documents too.
        """
        docs = list(documents)
        for d in docs:
            for what, value in (("id", d.id), ("title", d.title), ("text", d.text)):
                if not isinstance(value, str):
                    raise TypeError(f"document {d.id!r}: {what} must be a string, got {type(value).__name__}")
                check_text(value, f"document {d.id!r} {what}")
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DocumentError(f"document id {dup!r} appears more than once in the documents to add")
        existing = [i for i in ids if i in self.documents]
        if existing and not replace:
            raise ValueError(
                f"{len(existing)} document(s) are already in the index ({', '.join(map(repr, existing[:3]))}"
                f"{', ...' if len(existing) > 3 else ''}); delete them first or add with replace=True"
            )
        if self.tokenizer is None:
            raise ValueError("adding documents needs a tokenizer to chunk them: the encoder has no `tokenizer`")
        chunks = chunk_documents(docs, self.tokenizer, self.config.chunking)
        by_id = {d.id: d for d in docs}
        texts = [self._embedding_text(by_id[c.doc_id], c) for c in chunks]
        if existing:
            self._notify(existing)  # the old versions' caches go now, before the new ones arrive
        instruction = self.config.document_instruction
        if not texts:
            vectors = None
        elif keep_states is None:
            vectors = self._encode(texts, instruction)
        else:
            vectors = self._encode_keeping_states(texts, instruction, chunks, keep_states)
        if existing:
            self._remove(existing)
            if keep_states is None:  # else the caller holds the new versions' caches: save keeps them
                self.changed_documents.update(existing)
        rows = np.arange(self._next_id, self._next_id + len(chunks), dtype=np.int64)
        if vectors is not None:
            self.store.add(vectors, rows)
            self._record_placement()
        self._next_id += len(chunks)
        for row, chunk in zip(rows.tolist(), chunks, strict=True):
            self.chunks[row] = chunk
            self._rows.setdefault(chunk.doc_id, []).append(row)
        for doc in docs:
            if doc.id in self._rows:  # a document that produced no chunks could never be found; leave it out
                self.documents[doc.id] = doc
        log.info("added %d documents (%d chunks); index has %d documents", len(docs), len(chunks), len(self.documents))
        return len(chunks)

    def delete(self, doc_ids: str | Iterable[str]) -> int:
        """Remove documents and their chunks; returns the number of chunks removed. An unknown id raises
        ``UnknownDocumentError`` (a KeyError) and nothing is deleted."""
        ids = list(dict.fromkeys([doc_ids] if isinstance(doc_ids, str) else doc_ids))
        missing = [i for i in ids if i not in self.documents]
        if missing:
            more = " ..." if len(missing) > 5 else ""
            raise UnknownDocumentError(f"not in the index: {', '.join(map(repr, missing[:5]))}{more}")
        removed = self._remove(ids)
        self.changed_documents.update(ids)
        self._notify(ids)
        return removed

    def _remove(self, ids: list[str]) -> int:
        """Take indexed documents' chunks out of FAISS and the tables (no one is told)."""
        rows = [row for i in ids for row in self._rows[i]]
        removed = self.store.remove(np.array(rows, dtype=np.int64))
        if removed != len(rows):
            raise RuntimeError(f"FAISS removed {removed} vectors, expected {len(rows)}; the index is inconsistent")
        for i in ids:
            del self.documents[i]
            for row in self._rows.pop(i):
                del self.chunks[row]
        return len(rows)

    def _notify(self, ids: list[str]) -> None:
        self._watchers = [w for w in self._watchers if w() is not None]
        for watcher in self._watchers:
            watcher()(ids)

    def watch(self, method: Callable[[list[str]], object]) -> None:
        """Call ``method(doc_ids)`` whenever documents are deleted or replaced (a RAG drops their KV caches). Held
        weakly, so a RAG that is no longer used stops listening instead of being kept alive by its index."""
        self._watchers.append(weakref.WeakMethod(method))

    def _record_placement(self) -> None:
        placement = mf.encoder_placement(self.encoder)
        if placement is not None and placement not in self.placements:
            self.placements.append(placement)

    # --- searching ---------------------------------------------------------------------------------------------

    def search(
        self, queries: str | Sequence[str], k: int = 10, *, per_document: bool = False, instruction: str | None = None
    ) -> list[Hit] | list[list[Hit]]:
        """Best chunks for a query (a list of ``Hit``, best first), or for each of a list of queries.

        Args:
            k: Hits per query; fewer when the index holds fewer chunks (or documents, with ``per_document``).
            per_document: Keep only the best chunk of each document.
            instruction: Overrides the index's query instruction ("" for none).
        Example (Cranfield's first 300 documents, default model):
            >>> [(h.doc_id, round(h.score, 2)) for h in index.search("wing lift in a slipstream", k=2)]
            [('288', 0.79), ('219', 0.79)]
        """
        single = isinstance(queries, str)
        items = [queries] if single else list(queries)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not self.chunks:
            results: list[list[Hit]] = [[] for _ in items]
        elif not items:
            results = []
        else:
            query = self.config.query_instruction if instruction is None else instruction
            results = self._search_vectors(self._encode(items, query), k, per_document)
        return results[0] if single else results

    def search_vectors(self, vectors: np.ndarray, k: int = 10, *, per_document: bool = False):
        """``search`` for query vectors already computed (e.g. by an embedding pass that also kept the query's
        KV cache): one (d,) vector gives a list of hits, an (n, d) array a list per row."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        single = np.ndim(vectors) == 1
        vectors = np.array(vectors, dtype=np.float32, ndmin=2)
        if not self.chunks:
            return [] if single else [[] for _ in vectors]
        faiss.normalize_L2(vectors)
        results = self._search_vectors(vectors, k, per_document)
        return results[0] if single else results

    def _search_vectors(self, vectors: np.ndarray, k: int, per_document: bool) -> list[list[Hit]]:
        total = self.store.ntotal
        want = min(k, len(self.documents) if per_document else total)
        # One document can fill many of the top ranks; fetch more and widen until each query has k documents.
        fetch = min(total, k * 4 if per_document else k)
        while True:
            scores, ids = self.store.search(vectors, fetch)  # (q, fetch) each
            results = [self._hits(s, i, k, per_document) for s, i in zip(scores, ids, strict=True)]
            if fetch >= total or all(len(r) >= want for r in results):
                return results
            fetch = min(total, fetch * 4)

    def _hits(self, scores: np.ndarray, ids: np.ndarray, k: int, per_document: bool) -> list[Hit]:
        hits, seen = [], set()
        for score, row in zip(scores.tolist(), ids.tolist(), strict=True):
            if row < 0:  # FAISS pads with -1 when it finds fewer than asked
                continue
            chunk = self.chunks[row]
            if per_document and chunk.doc_id in seen:
                continue
            seen.add(chunk.doc_id)
            title = self.documents[chunk.doc_id].title
            hits.append(Hit(chunk.doc_id, chunk.number, score, chunk.text, title, chunk.start, chunk.end))
            if len(hits) == k:
                break
        return hits

    # --- embedding ---------------------------------------------------------------------------------------------

    def _embedding_text(self, doc: Document, chunk: Chunk) -> str:
        return self.embedded_text(doc.title, chunk.text)

    def embedded_text(self, title: str, text: str) -> str:
        """The text the index embedded for a chunk ("title text", or the bare chunk)."""
        return f"{title} {text}" if self.config.title_in_embedding and title else text

    def all_chunks(self) -> list[Hit]:
        """Every chunk as a Hit (score 0), e.g. to precompute their KV caches."""
        return [
            Hit(c.doc_id, c.number, 0.0, c.text, self.documents[c.doc_id].title, c.start, c.end)
            for c in self.chunks.values()
        ]

    def document_text(self, hit: Hit) -> str:
        """What a RAG prompt shows (and caches) for a hit: the same text its vector was computed from."""
        return self.embedded_text(hit.title, hit.text)

    def _encode(self, texts: list[str], instruction: str) -> np.ndarray:
        self._check_encoder()
        vectors = self.encoder.encode(texts, instruction=instruction, **self._length_limit())
        return self._checked_vectors(vectors, len(texts))

    def _encode_keeping_states(self, texts, instruction, chunks, keep_states) -> np.ndarray:
        """``_encode`` through ``encode_with_cache``, handing each chunk's states to ``keep_states`` a batch at a
        time (a corpus's states do not fit in memory at once: 23 MB per 1,000 tokens for SmolLM2-135M)."""
        self._check_encoder()
        if not hasattr(self.encoder, "encode_with_cache"):
            raise TypeError(f"{type(self.encoder).__name__} has no encode_with_cache: it cannot give chunk states")
        parts = []
        for start in range(0, len(texts), STATES_BATCH):
            batch = slice(start, start + STATES_BATCH)
            vectors, spans = self.encoder.encode_with_cache(texts[batch], instruction, **self._length_limit())
            for chunk, span in zip(chunks[batch], spans, strict=True):
                keep_states(chunk, span)
            parts.append(vectors)
        return self._checked_vectors(np.concatenate(parts), len(texts))

    def _check_encoder(self) -> None:
        if self.encoder is None:
            raise ValueError("this index was loaded without an encoder; pass the model to Index.load to add or search")

    def _length_limit(self) -> dict:
        return {} if self.config.max_length is None else {"max_length": self.config.max_length}

    def _checked_vectors(self, vectors, count: int) -> np.ndarray:
        vectors = np.array(vectors, dtype=np.float32, ndmin=2)
        if vectors.shape[0] != count:
            raise ValueError(f"the encoder returned {vectors.shape[0]} vectors for {count} texts")
        if self.store.dim is not None and vectors.shape[1] != self.store.dim:
            raise ValueError(f"the encoder gives {vectors.shape[1]}-d vectors, the index holds {self.store.dim}-d")
        faiss.normalize_L2(vectors)  # in place; inner product is then cosine whatever the encoder returned
        return vectors

    # --- saving ------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder (replacing an older index there). Refuses to replace a folder that is not an
        index, so a mistyped path never deletes user files. The KV caches in the older folder (``kv-*/``) are
        carried over for the documents that are still indexed unchanged; those of deleted or replaced documents
        are dropped."""
        target = Path(path).expanduser()
        if target.exists() and not mf.is_index_folder(target):
            raise FileExistsError(f"{target} exists and is not a grit index; refusing to overwrite it")

        def fill(folder: Path) -> None:
            self._write(folder)
            if target.is_dir():
                unchanged = [d for d in self.documents if d not in self.changed_documents]
                carried = kvstore.carry_over(target, folder, unchanged)
                if carried:
                    log.info("kept %d cached KV states of unchanged documents", carried)

        write_folder_atomically(target, fill)
        self.changed_documents.clear()  # the folder now matches this index exactly
        return target

    def _write(self, folder: Path) -> None:
        with (folder / DOCUMENTS).open("w", encoding="utf-8") as f:
            for d in self.documents.values():
                f.write(json.dumps({"id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False) + "\n")
        with (folder / CHUNKS).open("w", encoding="utf-8") as f:
            for row, c in self.chunks.items():
                f.write(json.dumps({"id": row, "doc": c.doc_id, "n": c.number, "start": c.start, "end": c.end}) + "\n")
        if self.store.index is not None:
            self.store.write(folder / VECTORS)
        config = asdict(self.config)
        instructions = {"query": config.pop("query_instruction"), "document": config.pop("document_instruction")}
        mf.write_manifest(
            folder,
            {
                "model": self.model,
                "placements": self.placements,
                "dim": self.store.dim or getattr(self.encoder, "dim", None),
                "instructions": instructions,
                "index_kind": self.store.kind,
                "counts": {"documents": self.num_documents, "chunks": self.num_chunks},
                "next_id": self._next_id,
                **config,  # chunking, store (quantize, requested kind, HNSW/IVF settings), title_in_embedding
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, encoder=None, *, tokenizer=None) -> Index:
        """Open a saved index. With an encoder, it must be the index's model (else ``ModelMismatchError``);
        without one the index can ``delete`` and ``save`` but not ``add`` or ``search``."""
        folder = Path(path).expanduser()
        m = mf.read_manifest(folder)
        if encoder is not None:
            mf.check_same_model(m["model"], mf.encoder_identity(encoder), folder)
        config = IndexConfig(
            chunking=ChunkConfig(**m["chunking"]),
            store=StoreConfig(**m["store"]),
            query_instruction=m["instructions"]["query"],
            document_instruction=m["instructions"]["document"],
            title_in_embedding=m["title_in_embedding"],
            max_length=m.get("max_length"),
        )
        index = cls(encoder, config, tokenizer=tokenizer)
        if encoder is None:  # else keep the encoder's identity: same model, but its path may have moved
            index.model = m["model"]
        index.placements = list(m.get("placements", []))
        index._next_id = m["next_id"]
        for line in _read_lines(folder / DOCUMENTS):
            index.documents[line["id"]] = Document(line["id"], line["text"], line["title"])
        for line in _read_lines(folder / CHUNKS):
            text = index.documents[line["doc"]].text[line["start"] : line["end"]]
            index.chunks[line["id"]] = Chunk(line["doc"], line["n"], line["start"], line["end"], text)
            index._rows.setdefault(line["doc"], []).append(line["id"])
        if (folder / VECTORS).exists():
            index.store = VectorStore.read(folder / VECTORS, config.store, m["index_kind"])
        counts = (index.num_documents, index.num_chunks, index.store.ntotal)
        if counts != (m["counts"]["documents"], m["counts"]["chunks"], m["counts"]["chunks"]):
            raise mf.IndexFormatError(
                f"{folder} is inconsistent: manifest counts {m['counts']}, files hold {counts[0]} documents, "
                f"{counts[1]} chunks and {counts[2]} vectors"
            )
        return index


def _read_lines(path: Path) -> Iterable[dict]:
    try:
        for _, row in read_jsonl(path):
            yield row
    except DataFormatError as e:
        raise mf.IndexFormatError(str(e)) from None
