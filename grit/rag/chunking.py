"""Cut documents into overlapping windows of tokens, counted with the embedding model's own tokenizer.

Windows are counted in tokens (what the model's context limits) but stored as character spans into the document
text, taken from the tokenizer's offsets, so ``doc.text[chunk.start:chunk.end] == chunk.text`` always holds and a
later step can find the chunk in the original (for citations, or for reusing a document's KV cache).

    tokens      t0 t1 t2 t3 t4 t5 t6 t7 t8 t9        chunk_tokens=4, overlap_tokens=1 -> step 3
    chunk 0     t0 t1 t2 t3
    chunk 1              t3 t4 t5 t6
    chunk 2                       t6 t7 t8 t9
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from grit.rag.documents import Document

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkConfig:
    chunk_tokens: int = 256  # leaves room for the instruction under GritModel.encode's max_length=512
    overlap_tokens: int = 32  # context shared by neighbours, so a sentence cut at a boundary is whole in one chunk

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")
        if not 0 <= self.overlap_tokens < self.chunk_tokens:
            raise ValueError(
                f"overlap_tokens must be >= 0 and < chunk_tokens ({self.chunk_tokens}), got {self.overlap_tokens}"
            )

    @property
    def step(self) -> int:
        return self.chunk_tokens - self.overlap_tokens


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    number: int  # position in its document, from 0
    start: int  # character span into Document.text: text == doc.text[start:end]
    end: int
    text: str


def token_windows(n_tokens: int, config: ChunkConfig) -> list[tuple[int, int]]:
    """Token ranges [start, end) of the chunks of a text with ``n_tokens`` tokens. The last window is shorter
    rather than repeating tokens; no window lies wholly inside the previous one's overlap."""
    if n_tokens == 0:
        return []
    starts = range(0, max(n_tokens - config.overlap_tokens, 1), config.step)
    return [(s, min(s + config.chunk_tokens, n_tokens)) for s in starts]


def chunk_documents(
    documents: Sequence[Document], tokenizer, config: ChunkConfig, *, batch_size: int = 64
) -> list[Chunk]:
    """Chunks of every document, in document order. ``tokenizer`` must be a Hugging Face fast tokenizer
    (it gives character offsets). Documents that tokenize to nothing are skipped with one warning."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"chunking needs a fast tokenizer with character offsets, got {type(tokenizer).__name__}")
    chunks: list[Chunk] = []
    empty = 0
    for i in range(0, len(documents), batch_size):
        batch = documents[i : i + batch_size]
        # verbose=False: documents are longer than the model's context on purpose; that is why we chunk them.
        enc = tokenizer([d.text for d in batch], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for doc, offsets in zip(batch, enc["offset_mapping"], strict=True):
            # Zero-width tokens (some tokenizers emit a bare word-start marker) cover no text; leave them out.
            spans = [(s, e) for s, e in offsets if e > s]
            windows = token_windows(len(spans), config)
            empty += not windows
            for number, (first, last) in enumerate(windows):
                start, end = spans[first][0], max(e for _, e in spans[first:last])
                chunks.append(Chunk(doc.id, number, start, end, doc.text[start:end]))
    if empty:
        log.warning("%d of %d documents produced no tokens and have no chunks", empty, len(documents))
    return chunks
