"""Several sequences in one row of a forward pass, each attending only to itself from position 0: no padding is
computed, so texts of mixed length cost their own tokens, not the longest one's times the batch.

    width, rows = pack([120, 10, 30, 5], width_cost=attention_width(config))   # which sequence goes in which row
    batch = pack_batch([ids_a, ids_b, ...], pad_id, device, width_cost)         # (R, W) ids, positions, segments
    mask = segment_mask(batch.segments, causal=False, dtype=torch.float32)      # (R, 1, W, W) block-diagonal
    states = unpack(model(batch.ids, mask, batch.positions).last_hidden_state, batch, lengths)   # (n, T, H)

RoPE is relative, so a sequence placed at any column with positions from 0 and a mask confined to its own segment
computes what it computes alone, up to float round-off (tests/test_encode.py, tests/train/test_packing.py). The
same rows serve embedding (bidirectional blocks) and next-token training (causal blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

PACK_WIDTHS = (128, 256, 512, 1024)  # row widths tried (a row is never narrower than the batch's longest sequence)


def attention_width(config) -> int:
    """Tokens of attention that cost as much as one token's linear layers: per token and layer, the projections
    and MLP take 2·(2h² + 2h·kv + 3h·ffn) flops, attention over a row of W keys 4·W·h. A packed row of W tokens
    therefore adds W / attention_width to each token's cost (SmolLM2-135M: about 3,000)."""
    h = config.hidden_size
    kv = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * (
        getattr(config, "head_dim", None) or h // config.num_attention_heads
    )
    ffn = getattr(config, "intermediate_size", None) or 4 * h
    return max((2 * h * h + 2 * h * kv + 3 * h * ffn) // (2 * h), 1)


def pack(lengths: Sequence[int], width_cost: int) -> tuple[int, list[list[int]]]:
    """Row width and rows (lists of indices into ``lengths``) for a batch, by first-fit decreasing at each candidate
    width; the cheapest is kept: rows x width tokens, each costing 1 + width / ``width_cost`` (attention)."""
    if not lengths or min(lengths) < 1:
        raise ValueError(f"pack needs sequences of at least one token, got lengths {list(lengths)[:8]}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    longest = lengths[order[0]]
    best: tuple[float, int, list[list[int]]] | None = None
    for width in sorted({longest, *(max(w, longest) for w in PACK_WIDTHS)}):
        rows: list[list[int]] = []
        free: list[int] = []
        for i in order:
            row = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
            if row is None:
                rows.append([])
                free.append(width)
                row = len(rows) - 1
            rows[row].append(i)
            free[row] -= lengths[i]
        cost = len(rows) * width * (1 + width / width_cost)
        if best is None or cost < best[0]:
            best = (cost, width, rows)
    return best[1], best[2]


@dataclass
class PackedBatch:
    """Several sequences per row: ``ids``, ``positions`` (each sequence from 0) and ``segments`` (each sequence its
    own number from 1, padding 0), each (R, W); ``places[j]`` = (row, start) of the batch's j-th sequence."""

    ids: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    places: list[tuple[int, int]]

    def lay_out(self, values: Sequence[Sequence[int]], fill: int) -> torch.Tensor:
        """(R, W) long tensor with ``values[j]`` (one per token of sequence j, e.g. labels) where sequence j sits
        and ``fill`` elsewhere."""
        out = torch.full(self.ids.shape, fill, dtype=torch.long)
        for (row, start), v in zip(self.places, values, strict=True):
            out[row, start : start + len(v)] = torch.tensor(list(v), dtype=torch.long)
        return out.to(self.ids.device)

    def index(self, lengths: Sequence[int]) -> torch.Tensor:
        """(n, T) positions in the flattened (R·W) rows of each sequence's tokens, T the longest length; columns past
        a sequence's end point at position 0 (their values are padding: masked by whoever reads them)."""
        width = self.ids.shape[1]
        out = torch.zeros((len(lengths), max(lengths)), dtype=torch.long)
        for j, ((row, start), n) in enumerate(zip(self.places, lengths, strict=True)):
            out[j, :n] = torch.arange(row * width + start, row * width + start + n)
        return out.to(self.ids.device)


def pack_batch(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device, width_cost: int) -> PackedBatch:
    """Pack token id lists into rows (``pack``) as tensors on ``device``."""
    width, rows = pack([len(s) for s in sequences], width_cost)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.zeros((len(rows), width), dtype=torch.long)
    places: list[tuple[int, int]] = [(0, 0)] * len(sequences)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(sequences[i])
            ids[r, start : start + n] = torch.tensor(list(sequences[i]))
            positions[r, start : start + n] = torch.arange(n)
            segments[r, start : start + n] = i + 1
            places[i] = (r, start)
            start += n
    return PackedBatch(ids.to(device), positions.to(device), segments.to(device), places)


def segment_mask(
    segments: torch.Tensor, causal: bool, dtype: torch.dtype, blocks: torch.Tensor | None = None
) -> torch.Tensor:
    """(R, W) segment numbers → (R, 1, W, W) additive mask from ``allowed_attention``."""
    return additive_mask(allowed_attention(segments, causal, blocks), dtype)[:, None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool "may attend" tensor as the additive mask attention takes: 0 where allowed, the dtype's minimum else."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def allowed_attention(segments: torch.Tensor, causal: bool, blocks: torch.Tensor | None = None) -> torch.Tensor:
    """(R, W) segment numbers → (R, W, W) bool: a token attends to the tokens of its own segment (all of them, or
    with ``causal`` those before it). Padding (segment 0) attends to padding, so no row is all masked.

    ``blocks`` (R, W), with ``causal``, marks spans inside a segment that were computed on their own, as cached
    documents are (cache-aware RAG rows): a token of block k > 0 attends to all of block k (bidirectional, as the
    embedding pass), of block k < 0 to the earlier tokens of block k (causal), and a token outside blocks (0: the
    question and answer, a chat) to every earlier token of its segment, blocks included."""
    allowed = segments[:, :, None] == segments[:, None, :]
    if not causal and blocks is not None:
        raise ValueError("blocks need causal attention around them")
    if not causal:
        return allowed
    earlier = torch.tril(torch.ones(allowed.shape[-2:], dtype=torch.bool, device=segments.device))
    if blocks is None:
        return allowed & earlier
    mine, theirs = blocks[:, :, None], blocks[:, None, :]
    in_block = mine != 0
    within = in_block & (mine == theirs) & ((mine > 0) | earlier)
    return allowed & (within | (~in_block & earlier))


def unpack(packed: torch.Tensor, batch: PackedBatch, lengths: Sequence[int]) -> torch.Tensor:
    """(R, W, ...) packed per-token values → (n, T, ...) right-padded per sequence (one gather, differentiable; the
    padding columns hold copies of position 0, for the reader's mask to drop)."""
    flat = packed.reshape(-1, *packed.shape[2:])
    index = batch.index(lengths)
    return flat.index_select(0, index.reshape(-1)).reshape(*index.shape, *packed.shape[2:])


def packed_forward_pass(
    base_model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    bidirectional: bool,
    use_cache: bool = False,
) -> tuple[Any, PackedBatch]:
    """One forward pass of ``sequences`` packed into rows (bidirectional or causal blocks): the model's output, with
    (R, W) states and caches, and the batch that says where each sequence sits."""
    batch = pack_batch(sequences, pad_id, device, attention_width(base_model.config))
    mask = segment_mask(batch.segments, not bidirectional, base_model.dtype)
    out = base_model(input_ids=batch.ids, attention_mask=mask, position_ids=batch.positions, use_cache=use_cache)
    return out, batch


def packed_hidden_states(
    base_model: torch.nn.Module, input_ids: torch.Tensor, padding_mask: torch.Tensor, bidirectional: bool
) -> torch.Tensor:
    """``grit.attention.hidden_states`` of a right-padded batch, computed packed: the same (B, T, H) states up to
    round-off, at the cost of the real tokens only (the padding columns of the result are not meaningful)."""
    lengths = padding_mask.sum(-1).tolist()
    sequences = [row[:n].tolist() for row, n in zip(input_ids, lengths, strict=True)]
    out, batch = packed_forward_pass(base_model, sequences, 0, input_ids.device, bidirectional)
    states = unpack(out.last_hidden_state, batch, lengths)
    width = input_ids.shape[1]
    if states.shape[1] < width:  # every row shorter than the padded width: keep the caller's shape
        states = torch.nn.functional.pad(states, (0, 0, 0, width - states.shape[1]))
    return states
