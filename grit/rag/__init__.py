"""Retrieval for RAG with a GRIT model: load documents, chunk them by tokens, index their vectors, search.

documents.py  read a folder of .txt/.md, JSON lines or a BEIR corpus.jsonl into Documents
chunking.py   overlapping token windows, kept as exact character spans of the document text
store.py      FAISS: flat / HNSW / IVF over float32 / float16 / int8 vectors
manifest.py   the index folder's manifest.json and the model identity that guards it
index.py      Index: add, delete, search, save, load
cli.py        `grit index build | add | delete | search`
"""

from grit.rag.answer import CACHE_MODES, RAG, Answer, RagFormat
from grit.rag.chunking import Chunk, ChunkConfig, chunk_documents
from grit.rag.documents import Document, DocumentError, load_documents
from grit.rag.index import DEFAULT_QUERY_INSTRUCTION, Hit, Index, IndexConfig
from grit.rag.manifest import IndexFormatError, ModelMismatchError
from grit.rag.store import StoreConfig

__all__ = [
    "CACHE_MODES",
    "RAG",
    "Answer",
    "RagFormat",
    "DEFAULT_QUERY_INSTRUCTION",
    "Chunk",
    "ChunkConfig",
    "Document",
    "DocumentError",
    "Hit",
    "Index",
    "IndexConfig",
    "IndexFormatError",
    "ModelMismatchError",
    "StoreConfig",
    "chunk_documents",
    "load_documents",
]
