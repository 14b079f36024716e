"""One decoding step for a batch of generations, over key/value caches kept in buffers that grow in place.

The continuous decoder (``grit.decoding``) advances every active generation by one token a step. On a CPU a step of
a small model is little arithmetic (SmolLM2-135M: ~14 ms of matrix products with float16-stored weights on 2 AVX2
cores), and two costs around it were as large:

* transformers' ``DynamicCache`` appends a token by concatenation, so every step copies every layer's whole cache
  (O(length) a token, ~4 ms a step at a few hundred tokens);
* the model's ``forward`` runs ~4,200 operators and the Python around them per token (mask building, output
  records, per-layer dispatch through hooks and kwargs), where the layers need ~1,000.

So here:

* ``KVBatch`` keeps each layer's keys and values in a buffer with room to grow: a step writes one column in place.
  Rows are left-padded to a common width, ``mask`` marks real tokens.
* ``llama_step`` runs a Llama-family model layer by layer with the model's own modules (norms, projections, rotary
  embedding, MLP) and one ``scaled_dot_product_attention`` over the buffer: transformers' operations in
  transformers' order, so its logits equal the model's forward (tests check equality on float32), without the
  machinery around them.
* ``transformers_step`` runs the model's own forward on a view of the buffer, for every other architecture.

``step_for`` picks one; ``llama_unsupported`` says why a model cannot take the fast path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grit.transformers_compat import cache_argument

# Columns added when a buffer is full: the caches are copied once every GROW tokens instead of every token, and a
# batch holds at most GROW spare columns a row (SmolLM2-135M: 46 KB a column, so 32 rows carry at most 94 MB).
GROW = 64


@dataclass
class KVBatch:
    """Left-padded key/value caches of the rows being decoded: per layer (B, kv_heads, capacity, head_dim); the
    first ``length`` columns are in use, ``mask`` (B, capacity) is True where a column is a real token of a row."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    length: int

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    @classmethod
    def of_cache(cls, cache, extra: int = GROW) -> KVBatch:
        """One row: a transformers ``DynamicCache`` of one sequence, with room for ``extra`` more tokens."""
        length = cache.get_seq_length()
        keys = [F.pad(layer.keys, (0, 0, 0, extra)) for layer in cache.layers]
        values = [F.pad(layer.values, (0, 0, 0, extra)) for layer in cache.layers]
        mask = torch.zeros((1, length + extra), dtype=torch.bool, device=keys[0].device)
        mask[:, :length] = True
        return cls(keys, values, mask, length)

    @staticmethod
    def stack(batches: list[KVBatch]) -> KVBatch:
        """The rows of ``batches`` in order, left-padded to the widest, with the most room any of them had."""
        width = max(b.length for b in batches)
        capacity = width + max(b.capacity - b.length for b in batches)
        parts = [b.widened(width, capacity) for b in batches]
        layers = range(len(parts[0].keys))
        return KVBatch([torch.cat([p.keys[i] for p in parts]) for i in layers],
                       [torch.cat([p.values[i] for p in parts]) for i in layers],
                       torch.cat([p.mask for p in parts]), width)  # fmt: skip

    def widened(self, width: int, capacity: int) -> KVBatch:
        """These rows with padding in front to ``width`` used columns, in buffers of ``capacity`` columns."""
        front, back = width - self.length, capacity - width

        def pad(states: torch.Tensor) -> torch.Tensor:
            return F.pad(states[:, :, : self.length], (0, 0, front, back))

        mask = F.pad(self.mask[:, : self.length], (front, back))
        return KVBatch([pad(k) for k in self.keys], [pad(v) for v in self.values], mask, width)

    def keep(self, rows: list[int]) -> KVBatch:
        """Only ``rows``, and only the columns one of them uses (padding every kept row has in front is cut)."""
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask[index, : self.length]
        first = int(mask.any(0).nonzero()[0])
        spare = self.capacity - self.length

        def cut(states: torch.Tensor) -> torch.Tensor:
            return F.pad(states[index, :, first : self.length], (0, 0, 0, spare))

        return KVBatch([cut(k) for k in self.keys], [cut(v) for v in self.values],
                       F.pad(mask[:, first:], (0, spare)), self.length - first)  # fmt: skip

    def reserve(self) -> None:
        """Room for one more column: the buffers grow by ``GROW`` when full."""
        if self.length < self.capacity:
            return
        self.keys = [F.pad(k, (0, 0, 0, GROW)) for k in self.keys]
        self.values = [F.pad(v, (0, 0, 0, GROW)) for v in self.values]
        self.mask = F.pad(self.mask, (0, GROW))

    def attention_mask(self) -> torch.Tensor | None:
        """The mask a step over columns ``0..length`` (the new token's included) attends with: None when no row has
        padding there (the common single-row case, where SDPA then runs unmasked)."""
        self.mask[:, self.length] = True
        used = self.mask[:, : self.length + 1]
        return None if bool(used.all()) else used


def llama_unsupported(lm: torch.nn.Module) -> str | None:
    """Why ``llama_step`` cannot run ``lm``, or None when it can: a transformers ``LlamaForCausalLM`` whose layers
    are the plain Llama layer (the fast path calls its parts, so anything the layer's forward would add, such as a
    sliding window or a norm on queries and keys, must not be there)."""
    if type(lm).__name__ != "LlamaForCausalLM":
        return f"it is a {type(lm).__name__}, not a LlamaForCausalLM"
    parts = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
    for layer in lm.model.layers:
        if type(layer).__name__ != "LlamaDecoderLayer" or not all(hasattr(layer, p) for p in parts):
            return f"its layers are {type(layer).__name__}, not LlamaDecoderLayer"
        if type(layer.self_attn).__name__ != "LlamaAttention":
            return f"its attention is {type(layer.self_attn).__name__}, not LlamaAttention"
    if getattr(lm.config, "pretraining_tp", 1) not in (1, None):
        return "it splits its projections for tensor parallelism (pretraining_tp > 1)"
    return None


@torch.inference_mode()
def llama_step(lm: torch.nn.Module, batch: KVBatch, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits (B, vocab) for one new token a row (``tokens``, ``positions``: (B, 1)); the tokens' keys and values are
    written into ``batch`` at column ``length``, which then grows by one. The operations of transformers' Llama
    forward for one query token (decoder layer, attention with the cache, final norm, head), in its order."""
    model = lm.model
    batch.reserve()
    mask = batch.attention_mask()
    if mask is not None:
        mask = mask[:, None, None, :]
    n = batch.length
    rows = tokens.shape[0]
    x = model.embed_tokens(tokens)
    cos, sin = model.rotary_emb(x, positions)
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, 1, head_dim): one position a row, broadcast over heads
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        h = rms_norm(layer.input_layernorm, x)
        q = attn.q_proj(h).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        batch.keys[i][:, :, n : n + 1] = k
        batch.values[i][:, :, n : n + 1] = v
        o = F.scaled_dot_product_attention(q, batch.keys[i][:, :, : n + 1], batch.values[i][:, :, : n + 1],
                                           attn_mask=mask, scale=attn.scaling, enable_gqa=True)  # fmt: skip
        x = x + attn.o_proj(o.transpose(1, 2).reshape(rows, 1, -1))
        x = x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))
    batch.length = n + 1
    return lm.lm_head(rms_norm(model.norm, x))[:, -1].float()


def rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' ``LlamaRMSNorm`` of float32 ``x`` as one aten call: the same operations in the same order, in
    C++ (equal to the bit) instead of eight operators dispatched from Python, 61 times a step. Other dtypes (the
    module casts bf16 to float32 and back) and other norms go through the module."""
    if x.dtype == torch.float32 and type(norm).__name__ == "LlamaRMSNorm":
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """transformers' RoPE rotation: (x1, x2) → (−x2, x1) over the two halves of the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.inference_mode()
def transformers_step(
    lm: torch.nn.Module, batch: KVBatch, tokens: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """``llama_step``'s contract through the model's own forward: a ``DynamicCache`` over views of the buffers
    (the forward appends the new column by concatenation; it is copied back into the buffer)."""
    from transformers import DynamicCache

    batch.reserve()
    mask = batch.attention_mask()
    n = batch.length
    cache = DynamicCache(
        [(k[:, :, :n], v[:, :, :n]) for k, v in zip(batch.keys, batch.values, strict=True)], config=lm.config
    )
    out = lm(input_ids=tokens, attention_mask=None if mask is None else mask.long(), position_ids=positions,
             use_cache=True, **cache_argument(cache))  # fmt: skip
    for i, layer in enumerate(cache.layers):
        batch.keys[i][:, :, n] = layer.keys[:, :, n]
        batch.values[i][:, :, n] = layer.values[:, :, n]
    batch.length = n + 1
    return out.logits[:, -1].float()


Step = Callable[[torch.nn.Module, KVBatch, torch.Tensor, torch.Tensor], torch.Tensor]
STEPS: dict[str, Step] = {"llama": llama_step, "transformers": transformers_step}


def step_for(lm: torch.nn.Module, kind: str = "auto") -> Step:
    """The step function for ``lm``: ``"auto"`` takes ``llama_step`` where the model allows it, else
    ``transformers_step``; ``"llama"`` refuses a model it cannot run, with the reason."""
    if kind == "auto":
        kind = "transformers" if llama_unsupported(lm) else "llama"
    if kind not in STEPS:
        raise ValueError(f"unknown decoding step {kind!r}; choose from auto, {', '.join(STEPS)}")
    if kind == "llama" and (reason := llama_unsupported(lm)):
        raise ValueError(f"the llama decoding step cannot run this model: {reason}")
    return STEPS[kind]
