"""Embeddings in fewer bits: int8 / uint8 (a 256-step scale per dimension) and binary / ubinary (one sign bit per
dimension, packed 8 to a byte), with sentence-transformers' semantics so its users get the same arrays.

    >>> vectors = model.encode(texts, precision="ubinary")      # (n, dim / 8) uint8, for Hamming search
    >>> quantize(vectors_f32, "int8", ranges=calibration_ranges(corpus_f32))

int8 and uint8 need each dimension's range: from ``ranges`` ((2, dim): minimum row, maximum row), else from
``calibration`` embeddings, else from the embeddings themselves (fine for a corpus, meaningless for one vector, which
is refused). Tests check every precision against ``sentence_transformers.quantize_embeddings``.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "int8", "uint8", "binary", "ubinary")


def calibration_ranges(embeddings: np.ndarray) -> np.ndarray:
    """(2, dim): each dimension's minimum and maximum over ``embeddings`` (n, dim)."""
    return np.vstack((embeddings.min(axis=0), embeddings.max(axis=0)))


def quantize(
    embeddings: np.ndarray,
    precision: Precision,
    ranges: np.ndarray | None = None,
    calibration: np.ndarray | None = None,
) -> np.ndarray:
    """``embeddings`` (n, dim) float in ``precision``: float32 (n, dim), int8 / uint8 (n, dim), binary (int8) /
    ubinary (uint8) (n, ceil(dim / 8))."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    embeddings = np.asarray(embeddings)
    if embeddings.dtype.kind != "f":
        raise TypeError(f"embeddings to quantize must be floats, got {embeddings.dtype}")
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(embeddings > 0, axis=-1)
        return packed if precision == "ubinary" else (packed - 128).astype(np.int8)
    if ranges is None:
        source = embeddings if calibration is None else np.asarray(calibration)
        if source.ndim == 1 or source.shape[0] == 1:
            raise ValueError(
                f"{precision} needs each dimension's range, and one embedding has none; pass ranges "
                "(grit.quantize.calibration_ranges of a representative set) or calibration embeddings"
            )
        if calibration is None and source.shape[0] < 100:
            log.warning("%s ranges from only %d embeddings; ranges from a larger set are steadier", precision,
                        source.shape[0])  # fmt: skip
        ranges = calibration_ranges(source)
    ranges = np.asarray(ranges, dtype=np.float32)
    starts = ranges[0]
    steps = (ranges[1] - starts) / 255
    steps = np.where(steps == 0, 1, steps)  # a constant dimension: every value in the first step
    steps_taken = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
    return steps_taken.astype(np.uint8) if precision == "uint8" else (steps_taken - 128).astype(np.int8)
