"""Cached key/value states of documents on disk, one safetensors file per chunk, with an in-memory LRU.

A cache is keyed by what it is (``CacheKey``): the model that computed it (``grit.identity``), the dtype it ran in,
its source (causal or bidirectional attention) and a hash of the exact token ids it stands for, plus the document
it belongs to. A document whose text changed tokenizes differently, so its old cache can never be served for the
new text: the key no longer matches, and the cache is recomputed. Stale files are also removed: ``evict_documents``
when a document is replaced or deleted, ``retain`` (``grit rag cache``) for anything no current chunk needs, and an
index save carries over only the files of unchanged documents (``carry_over``). File names start with a tag of the
document id, so evicting a document needs neither a model nor a tokenizer (``grit index delete`` loads none).

Each file holds per-layer keys and values, the token ids they stand for, and a CRC32 per tensor in its metadata:
safetensors alone catches a truncated file, the checksums also catch flipped bytes. A file that fails either check,
or whose recorded key or token ids differ from the ones asked for, is deleted and reported missing, so the caller
recomputes it instead of generating from garbage. Files are written under a temporary name and renamed into place.

Cost: layers × 2 × kv_heads × head_dim values per token (SmolLM2-135M: 30 × 2 × 3 × 64 = 11,520, i.e. 46 MB per
1,000 tokens in float32, 23 MB in float16). ``dtype="float16"`` halves disk and memory for a small loss of precision.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from grit.kvcache import SpanCache

log = logging.getLogger(__name__)

FOLDER_PREFIX = "kv-"  # an index folder's stores: kv-causal/, kv-bidirectional/
SUFFIX = ".safetensors"


def crc(t: torch.Tensor) -> str:
    return f"{zlib.crc32(t.contiguous().view(torch.uint8).numpy()):08x}"


def tokens_hash(ids: Iterable[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:24]


def document_tag(doc_id: str) -> str:
    """The file-name prefix of a document's caches (ids may hold any character; the tag is hex)."""
    return hashlib.sha1(doc_id.encode()).hexdigest()[:16]


def store_folder(index_folder: str | os.PathLike, source: str) -> Path:
    """Where an index folder keeps the caches of one source."""
    return Path(index_folder) / f"{FOLDER_PREFIX}{source}"


@dataclass(frozen=True)
class CacheKey:
    """What a cached span is. Two spans with equal keys hold the same states; anything else is another key."""

    doc_id: str  # the document the chunk belongs to (evicted with it)
    model: str  # ModelIdentity.id of the model that computed it
    dtype: str  # the dtype it was computed in: a bfloat16 cache is not a float32 computation
    source: str  # "causal" or "bidirectional"
    tokens: str  # tokens_hash of the span's token ids

    @classmethod
    def of(cls, doc_id: str, ids: Iterable[int], model: str, dtype: str, source: str) -> CacheKey:
        return cls(doc_id, model, dtype, source, tokens_hash(ids))

    @property
    def name(self) -> str:
        return "|".join((self.model, self.dtype, self.source, self.tokens, self.doc_id))

    @property
    def filename(self) -> str:
        return f"{document_tag(self.doc_id)}-{hashlib.sha1(self.name.encode()).hexdigest()[:20]}{SUFFIX}"


class KVStore:
    """Span caches by ``CacheKey``: ``put``, ``get`` (None when absent, corrupt or not this key), ``delete``,
    ``evict_documents``, ``retain``.

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
        self.lru: OrderedDict[CacheKey, SpanCache] = OrderedDict()
        self.held = 0

    def path(self, key: CacheKey) -> Path:
        return self.folder / key.filename

    def __contains__(self, key: CacheKey) -> bool:
        return key in self.lru or self.path(key).is_file()

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(f"*{SUFFIX}")) if self.folder.is_dir() else []

    def put(self, key: CacheKey, span: SpanCache) -> None:
        """Store ``span`` under ``key`` (in memory, and on disk when the folder is there: a store is a cache, so a
        write that fails, e.g. while another process swaps the index folder, is logged and skipped)."""
        tensors = {"ids": torch.tensor(span.ids, dtype=torch.int64)}
        for i, (k, v) in enumerate(zip(span.keys, span.values, strict=True)):
            tensors[f"k{i}"] = (k if self.dtype is None else k.to(self.dtype)).cpu().contiguous()
            tensors[f"v{i}"] = (v if self.dtype is None else v.to(self.dtype)).cpu().contiguous()
        meta = {"key": key.name, "attention": span.attention, "layers": str(len(span.keys))}
        meta.update({f"crc.{name}": crc(t) for name, t in tensors.items()})
        self.remember(key, self.to_span(tensors, meta))
        try:  # no mkdir here: re-creating a folder that an index save is swapping would break the swap
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            os.close(fd)
            try:
                save_file(tensors, tmp, metadata=meta)
                os.replace(tmp, self.path(key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            log.warning("could not store the KV cache of %r in %s (%s); kept in memory only", key.doc_id,
                        self.folder, e)  # fmt: skip

    def get(self, key: CacheKey) -> SpanCache | None:
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
            if bad:
                raise ValueError(f"checksum mismatch in {bad[:3]}")
            if meta.get("key") != key.name or tokens_hash(tensors["ids"].tolist()) != key.tokens:
                raise ValueError("the file holds another span than its name says")
            span = self.to_span(tensors, meta)
        except Exception as e:  # truncated, corrupt, or not a safetensors file at all
            log.warning("KV cache file %s for %r is unreadable (%s); it will be recomputed", path.name, key.doc_id, e)
            path.unlink(missing_ok=True)
            return None
        self.remember(key, span)
        return span

    def delete(self, key: CacheKey) -> None:
        self.forget(lambda k: k == key)
        self.path(key).unlink(missing_ok=True)

    def evict_documents(self, doc_ids: Iterable[str]) -> int:
        """Delete every cache of these documents (all models, dtypes and sources); returns the files removed."""
        ids = set(doc_ids)
        self.forget(lambda k: k.doc_id in ids)
        tags = {document_tag(i) for i in ids}
        removed = [p for p in self.files() if p.name.split("-", 1)[0] in tags]
        for p in removed:
            p.unlink(missing_ok=True)
        return len(removed)

    def retain(self, keys: Iterable[CacheKey]) -> int:
        """Delete every file and memory entry that is not one of ``keys``; returns the files removed."""
        keep = set(keys)
        names = {k.filename for k in keep}
        self.forget(lambda k: k not in keep)
        removed = [p for p in self.files() if p.name not in names]
        for p in removed:
            p.unlink(missing_ok=True)
        return len(removed)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    # --- internals ---------------------------------------------------------------------------------------------

    @staticmethod
    def to_span(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> SpanCache:
        n = int(meta["layers"])
        keys = [tensors[f"k{i}"] for i in range(n)]
        values = [tensors[f"v{i}"] for i in range(n)]
        return SpanCache(tensors["ids"].tolist(), keys, values, meta["attention"])  # type: ignore[arg-type]

    def remember(self, key: CacheKey, span: SpanCache) -> None:
        if key in self.lru:
            self.held -= self.lru.pop(key).nbytes()
        self.lru[key] = span
        self.held += span.nbytes()
        while self.held > self.memory_bytes and len(self.lru) > 1:
            _, dropped = self.lru.popitem(last=False)
            self.held -= dropped.nbytes()

    def forget(self, drop) -> None:
        for key in [k for k in self.lru if drop(k)]:
            self.held -= self.lru.pop(key).nbytes()


def carry_over(old_index: Path, new_index: Path, keep_doc_ids: Iterable[str]) -> int:
    """Give a freshly written index folder the KV stores of the folder it replaces, with only the files of the
    documents in ``keep_doc_ids`` (those still indexed with unchanged text). Files are hard-linked where the file
    system allows (no copy, and the old folder stays whole until it is swapped out), else copied. Returns the
    files carried over."""
    tags = {document_tag(i) for i in keep_doc_ids}
    carried = 0
    for old in sorted(old_index.glob(f"{FOLDER_PREFIX}*")):
        if not old.is_dir():
            continue
        new = new_index / old.name
        new.mkdir(exist_ok=True)
        for path in old.glob(f"*{SUFFIX}"):
            if path.name.split("-", 1)[0] not in tags:
                continue
            try:
                os.link(path, new / path.name)
            except OSError:
                try:
                    shutil.copy2(path, new / path.name)
                except FileNotFoundError:  # deleted by a process that evicted it meanwhile: nothing to carry
                    continue
            carried += 1
    return carried
