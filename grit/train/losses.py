"""GRIT's two losses: contrastive (InfoNCE) for embedding, next-token cross-entropy for generation.

The training loss is ``contrastive_loss(...) + loss_gen_factor * next_token_loss(...)`` (GritLM, Muennighoff et al.
2024, eq. 3), each computed on its own batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from grit.likelihood import (  # in core: evaluation scores with it too
    IGNORE,
    next_token_loss,
    next_token_loss_from_states,
    reduce_next_token_loss,
    trained_tokens,
)


def contrastive_loss(
    q: Tensor,
    p: Tensor,
    temperature: float = 0.02,
    symmetric: bool = False,
    *,
    group_size: int | None = None,
    offset: int = 0,
    passage_keys: Tensor | None = None,
) -> Tensor:
    """InfoNCE with in-batch and hard negatives; scale = 1 / temperature.

    Args:
        q: (b, H) query embeddings, L2-normalised (so ``q @ p.T`` is cosine similarity).
        p: (N*G, H) passage embeddings; rows j*G .. j*G+G-1 belong to query j and the first is its positive, the
            other G-1 its hard negatives. Every other row is an in-batch negative for query j.
        temperature: GritLM uses 0.02.
        symmetric: also score each positive passage against the queries (target: its own query) and return the
            mean of the two directions. Hard negatives are not anchors in that direction: they have no query.
        group_size: G. Leave None when ``p`` holds the passages of exactly these queries (G = len(p) // len(q)).
        offset: index of ``q[0]`` among the N queries ``p`` was built for. Negatives gathered across processes:
            pass the local queries, the passages of all processes (local ones in place, so their gradient flows)
            and ``offset = rank * b``. Gather with ``torch.distributed.nn.functional.all_gather`` so the other
            processes' passages get gradients from these queries too; with plain ``all_gather`` they are
            constants and this process's queries do not push them (GritLM then gathers the queries as well and
            computes the full N-query loss on every process, which is also ``offset=0`` with gathered q and p).
            With ``symmetric``, the passage-to-query direction only sees the queries in ``q``.
        passage_keys: (N*G,) a fingerprint per passage (equal texts, equal keys). Other copies of a query's
            positive are left out of its negatives: several questions about one passage, or rows labelled alike
            whose positive is the label, would otherwise be pushed away from their own positive. Likewise, with
            ``symmetric``, queries that share a positive are not each other's negatives.
    Returns:
        Mean cross-entropy over the b queries (scalar).
    Example:
        >>> q = F.normalize(torch.randn(4, 8), dim=-1); p = F.normalize(torch.randn(8, 8), dim=-1)  # G = 2
        >>> contrastive_loss(q, p, temperature=0.05).shape
        torch.Size([])
    """
    b = len(q)
    if group_size is None:
        if offset:
            raise ValueError("pass group_size when offset is set (p then holds the passages of other queries too)")
        if len(p) % b:
            raise ValueError(f"{len(p)} passages are not a whole number of groups for {b} queries")
        group_size = len(p) // b
    if len(p) % group_size or offset + b > len(p) // group_size:
        raise ValueError(f"{b} queries at offset {offset} do not fit {len(p)} passages in groups of {group_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q, p = q.float(), p.float()  # bf16 scores / 0.02 lose too many digits for a stable softmax
    positives = (torch.arange(b, device=q.device) + offset) * group_size  # row of each query's positive
    scores = q @ p.T / temperature  # (b, H) x (H, N*G) -> (b, N*G)
    if passage_keys is not None:
        if passage_keys.shape != (len(p),):
            raise ValueError(f"passage_keys has shape {tuple(passage_keys.shape)}; expected ({len(p)},)")
        copies = passage_keys[None, :] == passage_keys[positives][:, None]  # (b, N*G): the positive's copies
        copies[torch.arange(b, device=q.device), positives] = False
        scores = scores.masked_fill(copies, float("-inf"))
    loss = F.cross_entropy(scores, positives)
    if symmetric:
        reverse = p[positives] @ q.T / temperature  # (b, H) x (H, b) -> (b, b): positive j vs. every query
        if passage_keys is not None:
            mine = passage_keys[positives]
            shared = mine[:, None] == mine[None, :]  # queries j and i share a positive
            shared.fill_diagonal_(False)
            reverse = reverse.masked_fill(shared, float("-inf"))
        loss = (loss + F.cross_entropy(reverse, torch.arange(b, device=q.device))) / 2
    return loss


__all__ = [
    "IGNORE",
    "contrastive_loss",
    "next_token_loss",
    "next_token_loss_from_states",
    "reduce_next_token_loss",
    "trained_tokens",
]
