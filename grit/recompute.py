"""Selective recompute of joined span caches (CacheBlend's idea, Yao et al. 2025, written for grit).

Cached spans joined side by side (``grit.kvcache.join_caches``) are exact in their first layer, whose keys and
values see no other token, but from the second layer on each span's states never attended to the spans before it.
A full prefill repairs that at the cost of the whole context. CacheBlend's observation: a small share of tokens
carries most of the deviation, and recomputing those lets later layers attend across spans.

``recompute_joined`` runs a fresh causal prefill of the whole context through the layers up to ``check_layer``
(``check_layer + 1`` of the model's layers), which gives every token its exact states there, and picks the
``ratio`` of context tokens whose keys at ``check_layer`` deviate most from the joined ones. Those tokens alone
then continue from that prefill's hidden states through the remaining layers: at each layer their new keys and
values are written into the joined cache at their own positions, and they attend causally to all earlier tokens,
cached or recomputed. ``ratio=0`` is the plain join, ``ratio=1`` recomputes every token: a full causal prefill.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from grit.kvcache import SpanCache, join_caches
from grit.packing import additive_mask
from grit.transformers_compat import cache_argument


def causal_mask(query_positions: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, m, width) additive mask: the token at each of ``query_positions`` sees the positions up to its own."""
    keys = torch.arange(width, device=query_positions.device)
    return additive_mask(keys[None, :] <= query_positions[:, None], dtype)[None, None]


def check_recompute_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:  # NaN fails this too
        raise ValueError(f"recompute_ratio must be between 0 and 1, got {ratio}")


def check_layer_index(base_model: torch.nn.Module, layer: int) -> None:
    if not 0 <= layer < base_model.config.num_hidden_layers:
        raise ValueError(f"check_layer must be in 0..{base_model.config.num_hidden_layers - 1}, got {layer}")


def run_layers(base_model: torch.nn.Module, hidden: torch.Tensor, where: torch.Tensor, width: int, cache,
               layers: range) -> torch.Tensor:  # fmt: skip
    """Hidden states (1, m, H) of the tokens at positions ``where`` through the decoder ``layers``, each token
    attending causally to the ``width`` positions of ``cache`` (which each layer's attention updates with the
    tokens' own keys and values)."""
    rotary = base_model.rotary_emb(hidden, where[None])
    mask = causal_mask(where, width, hidden.dtype)
    for decoder_layer in base_model.layers[layers.start : layers.stop]:
        out = decoder_layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=where[None],
                            use_cache=True, **cache_argument(cache))  # fmt: skip
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


@torch.inference_mode()
def fresh_prefix(base_model: torch.nn.Module, ids: Sequence[int], layer: int):
    """A causal prefill of ``ids`` through the layers up to ``layer`` only: their hidden states after it (1, n, H)
    and a DynamicCache whose layers 0..``layer`` are exactly a full prefill's."""
    from transformers import DynamicCache

    check_layer_index(base_model, layer)
    device = next(base_model.parameters()).device
    hidden = base_model.embed_tokens(torch.tensor([list(ids)], device=device))
    cache = DynamicCache(config=base_model.config)
    where = torch.arange(len(ids), device=device)
    return run_layers(base_model, hidden, where, len(ids), cache, range(layer + 1)), cache


def fresh_keys(base_model: torch.nn.Module, ids: Sequence[int], layer: int) -> torch.Tensor:
    """Keys (kv_heads, n, head_dim) of layer ``layer`` for ``ids`` computed causally from scratch."""
    return fresh_prefix(base_model, ids, layer)[1].layers[layer].keys[0]


def deviating_tokens(fresh: torch.Tensor, cached: torch.Tensor, count: int, forced: torch.Tensor | None = None):
    """The ``count`` token positions (ascending) whose keys (kv_heads, n, head_dim) differ most, by the L2 norm of
    the difference summed over heads; ``forced`` positions are always among them and take their share of
    ``count``."""
    deviation = (fresh.float() - cached.float()).norm(dim=-1).sum(0)  # (n,)
    if forced is None or len(forced) == 0:
        return torch.topk(deviation, count).indices.sort().values
    deviation[forced] = float("inf")
    return torch.topk(deviation, max(count, len(forced))).indices.sort().values


def block_start_positions(spans: Sequence[SpanCache], first: int, device) -> torch.Tensor:
    """The positions of the first ``first`` tokens of every span, joined side by side."""
    starts, offset = [], 0
    for span in spans:
        starts += range(offset, offset + min(first, len(span)))
        offset += len(span)
    return torch.tensor(starts, dtype=torch.long, device=device)


def fused_suffix(prompt_after_spans: Sequence[int], ratio: float) -> list[int]:
    """What of the prompt after the joined spans should run inside the recompute's passes (``recompute_joined``'s
    ``suffix``): with recompute, all of it but its last token, whose logits the generation's own prefill computes;
    without, none (the plain join has no pass to share)."""
    return list(prompt_after_spans[:-1]) if ratio else []


@torch.inference_mode()
def recompute_joined(
    base_model: torch.nn.Module,
    spans: Sequence[SpanCache],
    ratio: float,
    check_layer: int = 1,
    reposition: bool = True,
    block_starts: int = 0,
    suffix: Sequence[int] = (),
):
    """``join_caches`` with the ``ratio`` of tokens that deviate most recomputed (module docstring). Returns the
    cache (a transformers ``DynamicCache``, batch 1), the ids it stands for, and the recomputed positions.

    ``suffix``: tokens that follow the spans (RAG's question turn), computed in the same passes and added to the
    cache: the check pass covers them too, and they go through the layers above it together with the recomputed
    tokens, so recompute costs no pass of its own beside the suffix's prefill (on a CPU a pass has a large fixed
    cost: thirty layers of small matrix products). The result equals recomputing first and running the suffix on
    top. ``block_starts``: the first that many tokens of each span are always among the recomputed ones (each
    span's start was an attention sink where it was cached alone), within the same budget."""
    from transformers import DynamicCache

    check_recompute_ratio(ratio)
    if not 0 <= block_starts:
        raise ValueError(f"block_starts must be >= 0, got {block_starts}")
    cache, ids = join_caches(base_model, spans, reposition)
    n, after = len(ids), list(suffix)
    count = min(n, math.ceil(ratio * n))
    device = next(base_model.parameters()).device
    tail = torch.arange(n, n + len(after), device=device)
    if count == 0:
        if after:
            base_model(input_ids=torch.tensor([after], device=device), position_ids=tail[None], use_cache=True,
                       **cache_argument(cache))  # fmt: skip
        return cache, ids + after, torch.zeros(0, dtype=torch.long, device=device)
    hidden, fresh = fresh_prefix(base_model, ids + after, check_layer)
    if count == n:
        chosen = torch.arange(n, device=device)
    else:
        forced = block_start_positions(spans, block_starts, device)
        checked = fresh.layers[check_layer].keys[0][:, :n]
        chosen = deviating_tokens(checked, cache.layers[check_layer].keys[0], count, forced)
    # The check pass already holds every token's exact states up to check_layer: they replace the joined ones
    # there, and the chosen tokens (and the suffix) continue from its hidden states rather than starting again at
    # layer 0. Above it, the suffix's places are written by the pass itself before anything attends to them.
    dtype = cache.layers[0].keys.dtype

    def room(t: torch.Tensor) -> torch.Tensor:
        return torch.cat((t, t.new_zeros(*t.shape[:2], len(after), t.shape[3])), dim=2)

    layers = [(fresh.layers[i].keys.to(dtype), fresh.layers[i].values.to(dtype)) if i <= check_layer
              else (room(layer.keys), room(layer.values)) for i, layer in enumerate(cache.layers)]  # fmt: skip
    moving = torch.cat((chosen, tail))
    writer = overwriting_cache_class()(layers, base_model.config, moving)
    run_layers(base_model, hidden[:, moving], moving, n + len(after), writer, range(check_layer + 1, len(layers)))
    joined = DynamicCache([(layer.keys, layer.values) for layer in writer.layers], config=base_model.config)
    return joined, ids + after, chosen


@functools.cache
def overwriting_cache_class():
    """``OverwritingCache``, defined on first use so that importing grit does not import transformers."""
    from transformers import DynamicCache

    class OverwritingCache(DynamicCache):
        """A DynamicCache whose ``update`` writes the new keys and values at ``positions`` of the cache it holds
        (and returns the whole layer) instead of appending them: how recomputed tokens replace their cached
        states."""

        def __init__(self, layers, config, positions: torch.Tensor):
            super().__init__(layers, config=config)
            self.positions = positions

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            layer = self.layers[layer_idx]
            layer.keys[:, :, self.positions] = key_states.to(layer.keys.dtype)
            layer.values[:, :, self.positions] = value_states.to(layer.values.dtype)
            return layer.keys, layer.values

    return OverwritingCache
