"""Turn texts into embeddings: format, tokenize, mark the text tokens, batch by length, pool, normalize."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from grit.attention import hidden_states
from grit.kvcache import SpanCache, forward_with_cache, split_caches
from grit.packing import packed_forward_pass, unpack
from grit.pooling import Pooling, check_pooling, pool
from grit.text import check_text
from grit.transformers_compat import returned_cache

log = logging.getLogger(__name__)


@dataclass
class EmbeddingInput:
    """One tokenized text: ids of prefix + text, and which of them are text tokens (pooled)."""

    ids: list[int]
    text_mask: list[int]
    truncated: bool = False


def normalize_rows(x) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32: cosine similarity becomes a dot product."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def check_texts(texts: str | Sequence[str]) -> tuple[list[str], bool]:
    """Validate input; returns the list of texts and whether a single string was given."""
    if isinstance(texts, str):
        texts, single = [texts], True
    elif isinstance(texts, Sequence) or hasattr(texts, "__iter__"):
        texts, single = list(texts), False
    else:
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(t).__name__}")
        check_text(t, f"texts[{i}]")
        if not t.strip():
            # Pooling over zero text tokens has no meaning (and over whitespace alone, none a caller wants): an error
            # beats a vector of the instruction or of spaces.
            what = "an empty string" if not t else "whitespace only"
            raise ValueError(f"texts[{i}] is {what}; there is nothing to embed")
    return texts, single


def tokenize(tokenizer, texts: list[str], prefix: str, max_length: int) -> list[EmbeddingInput]:
    """Tokenize ``prefix + text`` as one string (so the model sees the natural tokenization) and mark text tokens
    by their character offsets: a token is a text token when it covers any character after the prefix.

    Texts longer than ``max_length`` tokens in all are cut at the end; the prefix is always kept.
    """
    enc = tokenizer(
        [prefix + t for t in texts], add_special_tokens=True, return_offsets_mapping=True, return_attention_mask=False
    )
    out = []
    for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        # Special tokens (BOS/EOS) have the empty span (0, 0) and are never text tokens.
        mask = [int(end > len(prefix) and end > start) for start, end in offsets]
        first_text = mask.index(1) if 1 in mask else len(mask)
        if first_text >= max_length:
            raise ValueError(f"the instruction alone takes {first_text} tokens, max_length is {max_length}")
        truncated = len(ids) > max_length
        out.append(EmbeddingInput(ids[:max_length], mask[:max_length], truncated))
    return out


def pad_batch(items: list[EmbeddingInput], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Right-pad to the longest item: (ids, padding mask, text mask), each (B, T)."""
    width = max(len(x.ids) for x in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    padding = torch.zeros((len(items), width), dtype=torch.long)
    text = torch.zeros((len(items), width), dtype=torch.long)
    for row, x in enumerate(items):
        n = len(x.ids)
        ids[row, :n] = torch.tensor(x.ids)
        padding[row, :n] = 1
        text[row, :n] = torch.tensor(x.text_mask)
    return ids.to(device), padding.to(device), text.to(device)


def padded_forward(base_model, items: list[EmbeddingInput], pad_id: int, device, bidirectional: bool,
                   with_cache: bool) -> tuple[torch.Tensor, torch.Tensor, list[SpanCache] | None]:  # fmt: skip
    """The forward pass of ``items`` as one right-padded batch: states (B, T, H), text mask (B, T), and with
    ``with_cache`` each text's SpanCache."""
    ids, padding, text = pad_batch(items, pad_id, device)
    if not with_cache:
        return hidden_states(base_model, ids, padding, bidirectional), text, None
    attention = "bidirectional" if bidirectional else "causal"
    states, layers = forward_with_cache(base_model, ids, padding, attention)
    return states, text, split_caches(ids, padding, layers, attention)


def packed_forward(base_model, items: list[EmbeddingInput], pad_id: int, device, bidirectional: bool,
                   with_cache: bool) -> tuple[torch.Tensor, torch.Tensor, list[SpanCache] | None]:  # fmt: skip
    """The forward pass of ``items`` packed into rows, laid back out as a right-padded batch: states (B, T, H) and
    text mask (B, T), as ``pad_batch`` + one forward would give them (equal up to float round-off: each text
    attends only to itself, from position 0); with ``with_cache`` also each text's SpanCache."""
    out, batch = packed_forward_pass(base_model, [x.ids for x in items], pad_id, device, bidirectional, with_cache)
    states = unpack(out.last_hidden_state, batch, [len(x.ids) for x in items])  # (B, T, H)
    text = pad_batch(items, pad_id, device)[2]
    caches = None
    if with_cache:
        layers = [(layer.keys, layer.values) for layer in returned_cache(out).layers]
        attention = "bidirectional" if bidirectional else "causal"
        caches = [SpanCache(x.ids, [k[row, :, start : start + len(x.ids)].clone() for k, _ in layers],
                            [v[row, :, start : start + len(x.ids)].clone() for _, v in layers], attention)
                  for x, (row, start) in zip(items, batch.places, strict=True)]  # fmt: skip
    return states, text, caches


@torch.inference_mode()
def embed(
    base_model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    prefix: str,
    *,
    batch_size: int,
    max_length: int,
    pooling: Pooling,
    normalize: bool,
    bidirectional: bool = True,
    show_progress: bool | None = None,
    with_cache: bool = False,
    packed: bool = True,
) -> np.ndarray | tuple[np.ndarray, list[SpanCache]]:
    """Embeddings (n, H) float32 in input order. Batches hold texts of similar length (longest first, so an
    out-of-memory error shows at once rather than at the end).

    ``packed`` (the default) puts several texts in one row of the forward pass, each attending only to itself from
    position 0 (``packed_forward``), so no padding is computed: texts of mixed length cost their tokens, not the
    longest one's times the batch. ``packed=False`` is the right-padded batch, kept as the reference.

    ``with_cache`` also returns each input's key/value states from this same forward pass (for RAG cache reuse).
    """
    check_pooling(pooling)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    hidden_size = base_model.config.hidden_size
    if not texts:
        empty = np.zeros((0, hidden_size), dtype=np.float32)
        return (empty, []) if with_cache else empty
    items = tokenize(tokenizer, texts, prefix, max_length)
    cut = sum(x.truncated for x in items)
    if cut:
        n = len(texts)
        log.warning("%d of %d texts were longer than max_length=%d tokens and were truncated", cut, n, max_length)
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    device = next(base_model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.empty((len(items), hidden_size), dtype=np.float32)
    caches: list[SpanCache | None] = [None] * len(items)
    starts = range(0, len(order), batch_size)
    if show_progress is None:
        show_progress = len(starts) > 4
    for start in tqdm(starts, desc="encode", unit="batch", disable=not show_progress):
        rows = order[start : start + batch_size]
        forward = packed_forward if packed else padded_forward
        states, text, row_caches = forward(base_model, [items[i] for i in rows], pad_id, device, bidirectional,
                                           with_cache)  # fmt: skip
        for row, cache in zip(rows, row_caches or [], strict=False):
            caches[row] = cache
        vectors = pool(states, text, pooling)  # (B, H) float32
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        out[rows] = vectors.cpu().numpy()
    return (out, caches) if with_cache else out
