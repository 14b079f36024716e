"""Retrieval for RAG with a GRIT model: load documents, chunk them by tokens, index their vectors, search.

documents.py  read a folder of .txt/.md, JSON lines or a BEIR corpus.jsonl into Documents
chunking.py   overlapping token windows, kept as exact character spans of the document text
store.py      FAISS: flat / HNSW / IVF over float32 / float16 / int8 vectors
manifest.py   the index folder's manifest.json and the model identity that guards it
index.py      Index: add, delete, search, save, load
"""

from grit.lazy import lazy_exports

_EXPORTS = {
    "CACHE_MODES": "grit.rag.answer",
    "RAG": "grit.rag.answer",
    "Answer": "grit.rag.answer",
    "RagFormat": "grit.rag.modes",
    "Chunk": "grit.rag.chunking",
    "ChunkConfig": "grit.rag.chunking",
    "chunk_documents": "grit.rag.chunking",
    "Document": "grit.rag.documents",
    "DocumentError": "grit.rag.documents",
    "load_documents": "grit.rag.documents",
    "DEFAULT_QUERY_INSTRUCTION": "grit.rag.index",
    "Hit": "grit.rag.index",
    "Index": "grit.rag.index",
    "IndexConfig": "grit.rag.index",
    "IndexFormatError": "grit.rag.manifest",
    "ModelMismatchError": "grit.rag.manifest",
    "StoreConfig": "grit.rag.store",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
