"""What every evaluation task looks like, and helpers the task modules share.

A task is a small dataclass (its data files, instruction, limits) with three methods:

    supports(model) -> bool          can this model take part (an encoder, a generator, a retriever)?
    evaluate(model, cache) -> Scores  run it; ``cache`` is the model's EmbeddingCache or None
    limited(n) -> task               a copy that looks at no more than n examples (``--limit``)

The tasks themselves live in ``embedding_tasks`` (STS, retrieval, classification) and ``generative_tasks``
(perplexity, reading QA, instruction following); ``grit.eval`` exports them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from grit.eval.cache import EmbeddingCache


@dataclass
class Scores:
    """A task's result on one model: metric name -> value, and how many examples were scored."""

    metrics: dict[str, float]
    n: int
    skipped: int = 0  # examples left out (counted and warned about, e.g. a prompt longer than the context)
    details: dict[str, Any] = field(default_factory=dict)  # sizes and settings worth keeping in the JSON


@runtime_checkable
class Task(Protocol):
    name: str

    def supports(self, model: Any) -> bool: ...

    def evaluate(self, model: Any, cache: EmbeddingCache | None = None) -> Scores: ...

    def limited(self, n: int | None) -> Task: ...


def describe(task: Any) -> dict[str, Any]:
    """A task's settings as JSON-ready values (paths as strings), with its class name."""
    out: dict[str, Any] = {"type": type(task).__name__}
    for f in dataclasses.fields(task):
        value = getattr(task, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def check_limit(n: int | None) -> int | None:
    if n is not None and n < 1:
        raise ValueError(f"limit must be >= 1 or None, got {n}")
    return n


def min_limit(current: int | None, n: int | None) -> int | None:
    """The tighter of two limits (None means no limit)."""
    check_limit(n)
    return n if current is None else current if n is None else min(current, n)


def encode(model: Any, texts: Sequence[str], instruction: str, cache: EmbeddingCache | None = None) -> np.ndarray:
    """``model.encode(texts, instruction=...)`` as float32 ``(n, dim)``, through ``cache`` when one is given."""

    def compute(items: Sequence[str], instr: str) -> np.ndarray:
        vectors = np.asarray(model.encode(list(items), instruction=instr), dtype=np.float32)
        if vectors.shape[0] != len(items) or vectors.ndim != 2:
            raise ValueError(f"{type(model).__name__}.encode returned shape {vectors.shape} for {len(items)} texts")
        return vectors

    return cache.get_or_compute(texts, instruction, compute) if cache is not None else compute(texts, instruction)
