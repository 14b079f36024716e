"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"): the exact
gradient of a contrastive loss over a batch too large to embed with gradients at once.

The loss depends on the model only through the embeddings e_i, so d loss/d θ = Σ_i (d loss/d e_i) · (d e_i/d θ):

1. embed each chunk of ``chunk_size`` texts without gradients (no activations kept), noting the RNG state first;
2. compute the loss on those embeddings as leaf tensors and backprop it to them: d loss/d e, the cache;
3. embed each chunk again with gradients, from its saved RNG state (the same dropout masks, hence the same e), and
   backprop ``(e * cached_grad).sum()``, whose gradient is that chunk's terms of the sum above.

Memory: the activations of one chunk at a time, plus the (n, H) embeddings. Cost: one more forward pass. Same
gradient as the whole batch at once (tests/train/test_gradcache.py, float32). When the RNG is restored per chunk,
the stream ends where the first pass left it, so a run with GradCache draws the same random numbers afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from grit.rng import TorchRng

Inputs = tuple[Tensor, Tensor, Tensor]  # (ids, padding mask, text mask), each (n, T), right-padded
Encode = Callable[[Tensor, Tensor, Tensor], Tensor]  # one chunk of inputs -> (rows, H) embeddings


def chunks(inputs: Inputs, size: int) -> list[Inputs]:
    """Consecutive chunks of ``size`` rows, each cut to its longest row (trailing all-padding columns change
    nothing: pads are masked as keys, positions count real tokens, pooling skips them)."""
    ids, padding, _ = inputs
    out = []
    for start in range(0, len(ids), size):
        width = int(padding[start : start + size].sum(-1).max())
        out.append(tuple(t[start : start + size, :width] for t in inputs))
    return out


def gradcache_backward(
    encode: Encode,
    inputs: Sequence[Inputs],
    loss_fn: Callable[..., Tensor],
    chunk_size: int,
    scale: float = 1.0,
) -> Tensor:
    """Add the gradient of ``scale * loss_fn(encode(inputs[0]), encode(inputs[1]), ...)`` to the parameters'
    ``.grad``, embedding ``chunk_size`` rows at a time. Returns the loss, detached.

    Example (queries and passages, as the trainer calls it):
        >>> loss = gradcache_backward(encode, [queries, passages], lambda q, p: contrastive_loss(q, p), 8)
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    parts = [chunks(x, chunk_size) for x in inputs]
    states: list[list[TorchRng]] = []
    leaves: list[Tensor] = []
    with torch.no_grad():
        for part in parts:
            states.append([])
            embeddings = []
            for chunk in part:
                states[-1].append(TorchRng.capture())
                embeddings.append(encode(*chunk))
            leaves.append(torch.cat(embeddings).requires_grad_())  # (n, H), a leaf: its .grad is the cache
    loss = loss_fn(*leaves)
    (loss * scale).backward()
    for part, part_states, leaf in zip(parts, states, leaves, strict=True):
        for chunk, state, grad in zip(part, part_states, leaf.grad.split(chunk_size), strict=True):
            state.restore()
            # backward(grad) is backprop of (e * grad).sum(): the chunk's share of d loss/d θ.
            encode(*chunk).backward(grad)
    return loss.detach()
