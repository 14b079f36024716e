"""Chunk vectors in FAISS: inner-product search (cosine, since vectors are normalized) over int64 chunk ids.

    kind  FAISS index (factory string)           training            delete
    flat  IDMap2,{codec}                         int8 ranges only    remove_ids: IndexIDMap2 compacts the codes
    hnsw  IDMap2,HNSW{m},{codec}                 int8 ranges only    rebuild: HNSW graphs cannot drop a node
    ivf   IVF{nlist},{codec}                     k-means + ranges    remove_ids: IVF lists keep ids themselves

    codec: float32 -> Flat, float16 -> SQfp16, int8 -> SQ8 (one min/max per dimension, 1 byte a component)

Training happens on the first vectors added, so IVF centroids and int8 ranges come from the corpus given at build
time. IVF needs ``MIN_POINTS_PER_LIST`` vectors per list; with fewer, the store falls back to flat (with a
warning) and stays flat. int8 ranges get a 5% margin; later vectors outside them are clipped, and counted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

log = logging.getLogger(__name__)

Quantize = Literal["float32", "float16", "int8"]
Kind = Literal["flat", "hnsw", "ivf"]
CODECS = {"float32": "Flat", "float16": "SQfp16", "int8": "SQ8"}
KINDS = ("flat", "hnsw", "ivf")
MIN_POINTS_PER_LIST = 39  # below this FAISS's k-means warns that centroids are unreliable
INT8_RANGE_MARGIN = 0.05  # widen each learned min/max range so vectors added later clip less often


@dataclass(frozen=True)
class StoreConfig:
    quantize: Quantize = "float32"
    kind: Kind = "flat"
    hnsw_m: int = 32  # graph degree: more is better recall, more memory
    hnsw_ef_construction: int = 80  # FAISS default 40; a better graph for a slower build
    hnsw_ef_search: int = 128  # candidates per query; recall@10 >= 0.99 on random 32-d vectors (tests/rag)
    ivf_nlist: int = 0  # 0: min(4 * sqrt(n), n / MIN_POINTS_PER_LIST) lists, chosen at training
    ivf_nprobe: int = 16  # lists scanned per query

    def __post_init__(self) -> None:
        if self.quantize not in CODECS:
            raise ValueError(f"quantize must be one of {', '.join(CODECS)}, got {self.quantize!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ivf_nlist < 0:
            raise ValueError(f"ivf_nlist must be >= 0 (0 = automatic), got {self.ivf_nlist}")


class VectorStore:
    """A FAISS index, created on the first ``add`` (training needs data). ``kind`` is the kind actually built,
    which is "flat" after an IVF fallback."""

    def __init__(self, config: StoreConfig, index: faiss.Index | None = None, kind: Kind | None = None):
        self.config = config
        self.index = index
        self.kind: Kind = kind or config.kind
        if index is not None:
            self._configure()

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    @property
    def dim(self) -> int | None:
        return None if self.index is None else int(self.index.d)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add (n, d) float32 vectors under int64 ids; the first call creates and trains the index."""
        vectors, ids = np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if not len(ids):
            return
        if self.index is None:
            self.index = self._create(vectors)
        elif vectors.shape[1] != self.index.d:
            raise ValueError(f"vectors have {vectors.shape[1]} dimensions, the index holds {self.index.d}")
        else:
            self._warn_clipped(vectors)
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id; returns how many were removed."""
        if self.index is None or not len(ids):
            return 0
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.kind != "hnsw":
            return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        # HNSW: re-add the survivors to an emptied graph. reset() keeps the trained int8 ranges, and decoding then
        # re-encoding a stored vector gives back the same codes, so nothing drifts. Cost: a full graph build.
        inner = faiss.downcast_index(self.index.index)
        stored = faiss.vector_to_array(self.index.id_map)
        keep = ~np.isin(stored, ids)
        vectors = inner.reconstruct_n(0, len(stored))[keep]
        self.index.reset()
        self._configure()
        self.index.add_with_ids(vectors, stored[keep])
        return int((~keep).sum())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product: scores (q, k) float32 and ids (q, k) int64; id -1 pads missing results."""
        if self.index is None:
            raise ValueError("the vector store is empty")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(queries, k)

    def write(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def read(cls, path: Path, config: StoreConfig, kind: Kind) -> VectorStore:
        return cls(config, faiss.read_index(str(path)), kind)

    # --- building ----------------------------------------------------------------------------------------------

    def _create(self, vectors: np.ndarray) -> faiss.Index:
        n, dim = vectors.shape
        codec, nlist = CODECS[self.config.quantize], 0
        if self.kind == "ivf":
            nlist = self._ivf_lists(n)
            if not nlist:
                self.kind = "flat"
        spec = {
            "flat": f"IDMap2,{codec}",
            "hnsw": f"IDMap2,HNSW{self.config.hnsw_m},{codec}",
            "ivf": f"IVF{nlist},{codec}",
        }[self.kind]
        self.index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        self._configure()
        if self.config.quantize == "int8":
            self._scalar_quantizer().rangestat_arg = INT8_RANGE_MARGIN
        if self.kind == "ivf":
            self.index.cp.spherical = True  # unit-norm centroids, matching normalized vectors and inner product
        if not self.index.is_trained:
            self.index.train(vectors)
        log.info("created FAISS index %s from %d vectors", spec, n)
        return self.index

    def _ivf_lists(self, n: int) -> int:
        """Number of IVF lists for ``n`` training vectors, or 0 (with a warning) when ``n`` is too few."""
        nlist = self.config.ivf_nlist or min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST)
        if nlist >= 2 and n >= nlist * MIN_POINTS_PER_LIST:
            return nlist
        needed = max(nlist, 2) * MIN_POINTS_PER_LIST
        log.warning(
            "IVF training needs >= %d vectors (%d per list) and the corpus has %d; building a flat (exact) index",
            needed,
            MIN_POINTS_PER_LIST,
            n,
        )
        return 0

    def _configure(self) -> None:
        """Search settings are not all saved by FAISS; set them from the config after create and read."""
        if self.kind == "hnsw":
            hnsw = faiss.downcast_index(self.index.index).hnsw
            hnsw.efConstruction = self.config.hnsw_ef_construction
            hnsw.efSearch = self.config.hnsw_ef_search
        elif self.kind == "ivf":
            faiss.downcast_index(self.index).nprobe = self.config.ivf_nprobe

    def _scalar_quantizer(self) -> faiss.ScalarQuantizer | None:
        index = faiss.downcast_index(self.index)
        if self.kind in ("flat", "hnsw"):
            index = faiss.downcast_index(index.index)
        if self.kind == "hnsw":
            index = faiss.downcast_index(index.storage)
        return getattr(index, "sq", None)

    def _warn_clipped(self, vectors: np.ndarray) -> None:
        """int8 stores min + code * (range / 255) per dimension; count vectors with a component outside it.
        (IVF quantizes residuals to centroids, whose ranges do not apply to raw vectors, so it is not checked.)"""
        if self.config.quantize != "int8" or self.kind == "ivf":
            return
        trained = faiss.vector_to_array(self._scalar_quantizer().trained)  # [vmin (d), vdiff (d)]
        vmin, vdiff = trained[: self.index.d], trained[self.index.d :]
        outside = ((vectors < vmin) | (vectors > vmin + vdiff)).any(axis=1).sum()
        if outside:
            log.warning(
                "%d of %d added vectors fall outside the int8 ranges learned at build time and were clipped; "
                "rebuild the index if search quality drops",
                outside,
                len(vectors),
            )
