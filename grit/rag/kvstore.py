"""Cached key/value states of documents on disk, one safetensors file per chunk, with an in-memory LRU.

Each file holds per-layer keys and values, the token ids they stand for, and a CRC32 per tensor in its metadata:
safetensors alone catches a truncated file, the checksums also catch flipped bytes. A file that fails either check
is deleted and reported missing, so the caller recomputes it instead of generating from garbage. Files are written
under a temporary name and renamed into place: a crash never leaves a half-written file under a real name.

Cost: layers × 2 × kv_heads × head_dim values per token (SmolLM2-135M: 30 × 2 × 3 × 64 = 11,520, i.e. 46 MB per
1,000 tokens in float32, 23 MB in float16). ``dtype="float16"`` halves disk and memory for a small loss of precision.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from grit.kvcache import SpanCache

log = logging.getLogger(__name__)


def crc(t: torch.Tensor) -> str:
    return f"{zlib.crc32(t.contiguous().view(torch.uint8).numpy()):08x}"


class KVStore:
    """Span caches keyed by chunk id: ``put``, ``get`` (None when absent or corrupt), ``delete``.

    Args:
        folder: where the files live (created if missing).
        memory_bytes: cap on the caches held in memory; least recently used ones are dropped first.
        dtype: storage dtype (None keeps the model's).
    """

    def __init__(self, folder: str | os.PathLike, memory_bytes: int = 512 << 20, dtype: torch.dtype | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.memory_bytes = memory_bytes
        self.dtype = dtype
        self.lru: OrderedDict[str, SpanCache] = OrderedDict()
        self.held = 0

    def path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.safetensors"

    def __contains__(self, key: str) -> bool:
        return key in self.lru or self.path(key).is_file()

    def put(self, key: str, span: SpanCache) -> None:
        tensors = {"ids": torch.tensor(span.ids, dtype=torch.int64)}
        for i, (k, v) in enumerate(zip(span.keys, span.values, strict=True)):
            tensors[f"k{i}"] = (k if self.dtype is None else k.to(self.dtype)).cpu().contiguous()
            tensors[f"v{i}"] = (v if self.dtype is None else v.to(self.dtype)).cpu().contiguous()
        meta = {"key": key, "attention": span.attention, "layers": str(len(span.keys))}
        meta.update({f"crc.{name}": crc(t) for name, t in tensors.items()})
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.remember(key, self.to_span(tensors, meta))

    def get(self, key: str) -> SpanCache | None:
        """The span cache on the CPU, in the storage dtype (``join_caches`` moves it to the model)."""
        if key in self.lru:
            self.lru.move_to_end(key)
            return self.lru[key]
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(path)
            bad = [name for name, t in tensors.items() if meta.get(f"crc.{name}") != crc(t)]
            if meta.get("key") != key or bad:
                raise ValueError(f"checksum mismatch in {bad[:3]}" if bad else "file belongs to another key")
            span = self.to_span(tensors, meta)
        except Exception as e:  # truncated, corrupt, or not a safetensors file at all
            log.warning("KV cache file %s for %r is unreadable (%s); it will be recomputed", path.name, key, e)
            path.unlink(missing_ok=True)
            return None
        self.remember(key, span)
        return span

    def delete(self, key: str) -> None:
        span = self.lru.pop(key, None)
        if span is not None:
            self.held -= span.nbytes()
        self.path(key).unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.safetensors"))

    # --- internals ---------------------------------------------------------------------------------------------

    @staticmethod
    def to_span(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> SpanCache:
        n = int(meta["layers"])
        keys = [tensors[f"k{i}"] for i in range(n)]
        values = [tensors[f"v{i}"] for i in range(n)]
        return SpanCache(tensors["ids"].tolist(), keys, values, meta["attention"])  # type: ignore[arg-type]

    def remember(self, key: str, span: SpanCache) -> None:
        if key in self.lru:
            self.held -= self.lru.pop(key).nbytes()
        self.lru[key] = span
        self.held += span.nbytes()
        while self.held > self.memory_bytes and len(self.lru) > 1:
            _, dropped = self.lru.popitem(last=False)
            self.held -= dropped.nbytes()
