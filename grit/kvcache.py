"""Key/value caches of text spans, reused across the embedding and generation passes of one model.

The point of GRIT for RAG (Muennighoff et al. 2024, section 4): the forward pass that embeds a document (or a
query) also produces that text's keys and values in every layer. Keep them, and generation over "document +
question" only has to run the question's tokens through the model.

Two sources of a cache:
- ``bidirectional`` (GritLM's choice, free): the states of the embedding pass. Generation then attends to keys that
  were computed with bidirectional attention, which a causal model never produced, so answers can differ from a
  fresh computation (the paper discusses this; ``bench/rag_latency.py`` and the RAG eval measure it).
- ``causal``: a separate causal pass. Exact: generation from it equals generation from scratch, but it costs one
  more forward pass per document at index time.

Several cached spans can be put side by side (top-k > 1 documents; query + document). Each was computed at
positions 0..n-1, so GritLM's plain concatenation gives overlapping rotary positions. ``join_caches`` instead
re-rotates each span's keys to where it now sits: RoPE rotates a key at position p by angle p·θ, and rotations
compose, so rotating a cached key by offset·θ gives exactly the key that position p + offset would have produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from grit.attention import bidirectional_mask, positions
from grit.packing import additive_mask, allowed_attention
from grit.transformers_compat import cache_argument, returned_cache

CacheAttention = Literal["bidirectional", "causal"]


@dataclass
class SpanCache:
    """Keys and values of one token span in every layer, computed at positions 0..n-1.

    keys[i], values[i]: (kv_heads, n, head_dim) for layer i (no batch dimension: one span).
    """

    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    attention: CacheAttention

    def __len__(self) -> int:
        return len(self.ids)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@torch.inference_mode()
def forward_with_cache(
    base_model: torch.nn.Module, input_ids: torch.Tensor, padding_mask: torch.Tensor, attention: CacheAttention
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """One forward over a right-padded batch: last hidden states (B, T, H) and per-layer (keys, values), each
    (B, kv_heads, T, head_dim). Padding keys are masked, so slicing a row to its length gives that text's cache."""
    mask = bidirectional_mask(padding_mask, base_model.dtype) if attention == "bidirectional" else padding_mask
    out = base_model(input_ids=input_ids, attention_mask=mask, position_ids=positions(padding_mask), use_cache=True)
    layers = [(layer.keys, layer.values) for layer in returned_cache(out).layers]
    return out.last_hidden_state, layers


def split_caches(
    ids: torch.Tensor, padding_mask: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]], attention
) -> list[SpanCache]:
    """Per-row SpanCaches of a right-padded batch (copies, so one row's cache does not pin the whole batch)."""
    out = []
    for row, n in enumerate(padding_mask.sum(-1).tolist()):
        keys = [k[row, :, :n].clone() for k, _ in layers]
        values = [v[row, :, :n].clone() for _, v in layers]
        out.append(SpanCache(ids[row, :n].tolist(), keys, values, attention))
    return out


def compute_cache(base_model: torch.nn.Module, ids: Sequence[int], attention: CacheAttention) -> SpanCache:
    device = next(base_model.parameters()).device
    tensor = torch.tensor([list(ids)], device=device)
    _, layers = forward_with_cache(base_model, tensor, torch.ones_like(tensor), attention)
    return split_caches(tensor, torch.ones_like(tensor), layers, attention)[0]


def span_fits(base_model: torch.nn.Module, span: SpanCache) -> bool:
    """Whether a cached span has the shapes this model's caches have (every layer, its key/value heads and head
    size, one position per token): a file from another model, or a damaged one with valid checksums, does not."""
    config = base_model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (heads, len(span.ids), head_dim)
    return len(span.keys) == len(span.values) == config.num_hidden_layers and all(
        tuple(t.shape) == shape for t in (*span.keys, *span.values)
    )


def rotary_of(base_model: torch.nn.Module) -> torch.nn.Module:
    rotary = getattr(base_model, "rotary_emb", None)
    if rotary is None:
        arch = getattr(base_model.config, "model_type", "?")
        raise ValueError(f"{arch} has no rotary position embedding that grit can re-rotate; use one cached span")
    return rotary


def shift_keys(base_model: torch.nn.Module, keys: torch.Tensor, offset: int) -> torch.Tensor:
    """Keys (kv_heads, n, head_dim) computed at positions 0..n-1 → the keys positions offset..offset+n-1 give.

    Rotation by offset·θ in the model's own RoPE (its inv_freq and scaling), with rotate_half as Llama, Mistral,
    Qwen2 and Gemma apply it. The attention scaling some RoPE variants fold into cos/sin (YaRN) is divided out:
    the cached keys carry it once already.
    """
    if offset == 0:
        return keys
    rotary = rotary_of(base_model)
    where = torch.tensor([[offset]], device=keys.device)
    cos, sin = rotary(keys[None].float(), where)  # (1, 1, rot_dim) each
    scale = float(getattr(rotary, "attention_scaling", 1.0) or 1.0)
    cos, sin = (cos[0] / scale).float(), (sin[0] / scale).float()  # (1, rot_dim), broadcasts over heads and tokens
    rot = cos.shape[-1]  # partial rotary: only the first rot_dim channels are rotated
    k = keys[..., :rot].float()
    half = rot // 2
    rotated = torch.cat((-k[..., half:], k[..., :half]), dim=-1)  # rotate_half
    shifted = k * cos + rotated * sin
    return torch.cat((shifted.to(keys.dtype), keys[..., rot:]), dim=-1)


def join_caches(base_model: torch.nn.Module, spans: Sequence[SpanCache], reposition: bool = True):
    """Spans side by side as one transformers ``DynamicCache`` (batch 1), plus the ids they stand for.

    ``reposition`` re-rotates each span's keys to its place in the sequence; False reproduces GritLM's plain
    concatenation (every span at positions from 0), kept to measure what the fix buys.
    """
    from transformers import DynamicCache

    if not spans:
        raise ValueError("no cached spans to join")
    param = next(base_model.parameters())
    n_layers = len(spans[0].keys)
    layers = []
    for i in range(n_layers):
        keys, values, offset = [], [], 0
        for span in spans:
            k = span.keys[i].to(param.device, param.dtype)  # stored caches may be float16 on the CPU
            keys.append(shift_keys(base_model, k, offset) if reposition else k)
            values.append(span.values[i].to(param.device, param.dtype))
            offset += len(span)
        layers.append((torch.cat(keys, dim=1)[None], torch.cat(values, dim=1)[None]))  # (1, kv_heads, T, hd)
    ids = [t for span in spans for t in span.ids]
    return DynamicCache(layers, config=base_model.config), ids


def block_attention(block_lengths: Sequence[int], suffix_length: int, attention: CacheAttention) -> torch.Tensor:
    """Which token may attend to which (n, n) bool, for blocks cached on their own followed by a suffix that sees
    them all: each block attends only to itself (``causal``: to its earlier tokens; ``bidirectional``: to all of
    its tokens, as the embedding pass computed them); the suffix attends causally to everything before it. With
    positions 0..n-1 this is exactly what joined, re-rotated span caches stand for (RoPE scores depend only on
    relative positions), so one forward under this mask computes in one pass what caching does in several. The
    trainer's cache-aware rows are masked the same way (``grit.packing.allowed_attention``)."""
    if attention not in ("bidirectional", "causal"):
        raise ValueError(f"attention must be 'bidirectional' or 'causal', got {attention!r}")
    sign = 1 if attention == "bidirectional" else -1
    blocks = [sign * (k + 1) for k, length in enumerate(block_lengths) for _ in range(length)] + [0] * suffix_length
    segments = torch.ones(1, len(blocks), dtype=torch.long)
    return allowed_attention(segments, True, torch.tensor([blocks]))[0]


@torch.inference_mode()
def reference_logits(
    lm: torch.nn.Module,
    blocks: Sequence[Sequence[int]],
    suffix: Sequence[int],
    attention: CacheAttention = "causal",
) -> torch.Tensor:
    """What independently cached spans stand for, computed fresh: one forward over blocks + suffix under
    ``block_attention``. Returns the suffix's logits (len(suffix), vocab). The yardstick for ``join_caches``
    (tests and bench/rag_rope.py)."""
    ids = [t for b in blocks for t in b] + list(suffix)
    n, start = len(ids), len(ids) - len(suffix)
    allowed = block_attention([len(b) for b in blocks], len(suffix), attention)
    device, dtype = next(lm.parameters()).device, lm.dtype
    mask = additive_mask(allowed, dtype)[None, None].to(device)
    out = lm(input_ids=torch.tensor([ids], device=device), attention_mask=mask,
             position_ids=torch.arange(n, device=device)[None])  # fmt: skip
    return out.logits[0, start:]


@torch.inference_mode()
def logits_on_cache(lm: torch.nn.Module, spans: Sequence[SpanCache], suffix: Sequence[int], reposition: bool = True):
    """Logits of ``suffix`` run on top of the joined cached spans (len(suffix), vocab)."""
    cache, prefix = join_caches(lm.base_model, spans, reposition)
    device = next(lm.parameters()).device
    start = len(prefix)
    out = lm(input_ids=torch.tensor([list(suffix)], device=device), **cache_argument(cache), use_cache=True,
             position_ids=torch.arange(start, start + len(suffix), device=device)[None])  # fmt: skip
    return out.logits[0]
