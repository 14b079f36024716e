"""Corpus embeddings cached on disk between evaluation runs, under ``$GRIT_CACHE/embeddings``.

The key is sha256(model fingerprint, hash of the exact texts in order, instruction), so a retrained model, a changed
corpus or another instruction never reads stale vectors. Files are written under a temporary name and renamed into
place: a run killed mid-write leaves no file that a later run would load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grit.loading import cache_root

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"  # bump when what is stored changes meaning


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (length-prefixed, so ["ab", "c"] and ["a", "bc"] differ)."""
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@dataclass
class EmbeddingCache:
    """Embeddings of one model, stored as ``.npy`` files named by their key."""

    model_id: str
    root: Path | None = None  # default: cache_root() / "embeddings", read when used (tests set $GRIT_CACHE)

    @property
    def folder(self) -> Path:
        return self.root if self.root is not None else cache_root() / "embeddings"

    def key(self, texts: Sequence[str], instruction: str) -> str:
        parts = (FORMAT_VERSION, self.model_id, texts_hash(texts), instruction)
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]

    def path(self, texts: Sequence[str], instruction: str) -> Path:
        return self.folder / f"{self.key(texts, instruction)}.npy"

    def load(self, texts: Sequence[str], instruction: str) -> np.ndarray | None:
        path = self.path(texts, instruction)
        if not path.is_file():
            return None
        try:
            vectors = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:  # unreadable: recompute and overwrite rather than fail the run
            log.warning("ignoring unreadable cached embeddings %s: %s", path, e)
            return None
        if vectors.ndim != 2 or len(vectors) != len(texts):
            log.warning("ignoring cached embeddings %s: shape %s for %d texts", path, vectors.shape, len(texts))
            return None
        return vectors

    def save(self, texts: Sequence[str], instruction: str, vectors: np.ndarray) -> Path:
        target = self.path(texts, instruction)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.stem}-", suffix=".npy", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(vectors), allow_pickle=False)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def get_or_compute(
        self, texts: Sequence[str], instruction: str, compute: Callable[[Sequence[str], str], np.ndarray]
    ) -> np.ndarray:
        """Cached vectors for ``(texts, instruction)``, else ``compute(texts, instruction)`` stored for next time."""
        vectors = self.load(texts, instruction)
        if vectors is not None:
            log.info("read %d cached embeddings from %s", len(vectors), self.path(texts, instruction))
            return vectors
        vectors = np.asarray(compute(texts, instruction), dtype=np.float32)
        self.save(texts, instruction, vectors)
        return vectors
