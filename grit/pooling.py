"""Pool token states into one vector per text, over the text tokens only.

``text_mask`` marks the tokens of the text itself: instruction and format tokens (``<|user|>...<|embed|>\\n``) and
padding are 0, so the embedding does not average in the instruction (GritLM's instruction masking; the same idea as
sentence-transformers' ``Pooling(include_prompt=False)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # the names below are read by configs that must not need torch (`grit train --help`)
    import torch

Pooling = Literal["mean", "weighted_mean", "last", "cls"]
POOLINGS: tuple[str, ...] = get_args(Pooling)


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")


def pool(hidden: torch.Tensor, text_mask: torch.Tensor, pooling: Pooling = "mean") -> torch.Tensor:
    """(B, T, H) states and (B, T) 0/1 text mask → (B, H), computed in float32.

    mean: average of the text tokens. weighted_mean: weights 1, 2, ..., n over the text tokens, so later tokens,
    which have seen more context, count more (SGPT). last: the last text token. cls: the first text token.
    """
    import torch

    check_pooling(pooling)
    mask = text_mask.to(torch.float32)  # (B, T)
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError("a text has no tokens to pool (its text mask is empty)")
    hidden = hidden.to(torch.float32)
    if pooling in ("mean", "weighted_mean"):
        weights = mask.cumsum(-1) * mask if pooling == "weighted_mean" else mask  # (B, T)
        return (hidden * weights[..., None]).sum(1) / weights.sum(-1, keepdim=True)
    index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    if pooling == "last":
        pick = torch.where(mask.bool(), index, -1).amax(-1)  # (B,)
    else:  # cls
        pick = torch.where(mask.bool(), index, mask.shape[1]).amin(-1)
    return hidden[torch.arange(len(hidden), device=hidden.device), pick]
