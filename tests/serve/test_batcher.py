"""The embedding batcher runs a large batch one forward pass at a time and offers the model between passes."""

from __future__ import annotations

from grit.serve import scheduler
from grit.serve.scheduler import EmbeddingBatcher, FairGate

from .serveutil import row_cosines


def test_a_large_batch_offers_the_model_between_its_passes(tiny_grit, monkeypatch):
    texts = [("word " * (i % 9 + 1)) + f"number {i}" for i in range(70)]
    gate, offers = FairGate(), []
    monkeypatch.setattr(gate, "between_tokens", lambda: offers.append(1))
    batcher = EmbeddingBatcher(tiny_grit, gate, max_batch_texts=256, batch_size=32)
    try:
        got = batcher.submit(texts, "Represent the text", 512).result(timeout=60)
    finally:
        batcher.close()
    assert len(offers) == 2  # 70 texts in passes of 32: three passes, offered twice between them
    assert row_cosines(got, tiny_grit.encode(texts, "Represent the text")).min() >= 0.9999  # and in input order


def test_a_pass_is_also_bounded_by_characters(tiny_grit, monkeypatch):
    monkeypatch.setattr(scheduler, "PASS_CHARS", 100)
    texts = ["x" * 40, "y" * 40, "z" * 40, "w" * 500]  # 500 characters alone: one pass of its own
    gate, offers = FairGate(), []
    monkeypatch.setattr(gate, "between_tokens", lambda: offers.append(1))
    batcher = EmbeddingBatcher(tiny_grit, gate, batch_size=32)
    try:
        got = batcher.submit(texts, "", 512).result(timeout=60)
    finally:
        batcher.close()
    assert len(offers) == 2  # passes [40, 40] [40] [500]
    assert row_cosines(got, tiny_grit.encode(texts)).min() >= 0.9999
