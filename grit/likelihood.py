"""The next-token loss: cross-entropy of each answer token given everything before it, over labelled tokens only.

One function serves training (``grit.train.step``: the generative loss, "mixed" or "token" as GritLM weighs it)
and evaluation (``GritModel.target_nll``: the summed log-likelihood of a target given its prompt), so a perplexity
grit reports is the loss it trains.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # label of tokens that carry no loss (cross_entropy's ignore_index)


def trained_tokens(labels: Tensor) -> Tensor:
    """How many tokens of (B, T) ``labels`` carry loss: the predicted ones (1..T-1) whose label is not -100."""
    return (labels[:, 1:] != IGNORE).sum()


def next_token_loss(logits: Tensor, labels: Tensor, reduction: Literal["mixed", "token", "sum"] = "mixed") -> Tensor:
    """Cross-entropy of each token given the ones before it, over the tokens whose label is not -100.

    Args:
        logits: (B, T, V) the LM's output for ``input_ids``.
        labels: (B, T) ``input_ids`` where trained, -100 elsewhere. Not shifted: position t's logits are scored
            against label t+1 here.
        reduction: as GritLM's ``NextTokenLoss`` (gritlm/training/model.py):
            "mixed": mean over all trained tokens of this batch (what transformers' built-in loss does).
            "token": sum over all trained tokens divided by the number of sequences B.
            "sum": the sum over all trained tokens, for a caller that divides by counts of a larger batch (the
            trainer divides by the tokens or sequences of the whole batch over all processes).
    Returns:
        Scalar loss; 0 (with a gradient path) when no token is trained.

    Why they differ: "mixed" divides by a count that changes from batch to batch, so a token in a batch of short
    answers weighs more than one in a batch of long answers. Averaged again over gradient-accumulation steps (and
    in GritLM over processes; grit's trainer counts the tokens of all processes), it weighs neither every sample
    equally (which favours short outputs, and is unstable with noisy short samples) nor every token equally, but a
    mix. "token" divides by the constant B, so every token weighs the same in every batch (which favours long
    outputs); B only keeps the scale comparable to the contrastive loss, which Adam would not notice on its own.
    GritLM trains with "mixed".
    """
    if reduction not in ("mixed", "token", "sum"):
        raise ValueError(f"reduction must be 'mixed', 'token' or 'sum', got {reduction!r}")
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    shifted_logits = logits[:, :-1].float()  # (B, T-1, V): bf16 log-softmax over a large vocabulary is inexact
    shifted_labels = labels[:, 1:]  # (B, T-1): token t+1 is predicted from position t
    total = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return reduce_next_token_loss(total, labels, reduction)


def next_token_loss_from_states(
    states: Tensor, head: torch.nn.Module, labels: Tensor, reduction: Literal["mixed", "token", "sum"] = "mixed"
) -> Tensor:
    """``next_token_loss(head(states), labels, reduction)`` without the (B, T, V) logits: the head runs only on the
    positions whose next token is trained. The others' logits would be thrown away; skipping them saves the head's
    FLOPs (V x H per token, the largest layer of a small model) and the memory of their logits and gradients.

    Args:
        states: (B, T, H) the decoder's last hidden states.
        head: the LM head (H -> V), e.g. ``lm.get_output_embeddings()``.
        labels: (B, T) as for ``next_token_loss``.
    """
    if reduction not in ("mixed", "token", "sum"):
        raise ValueError(f"reduction must be 'mixed', 'token' or 'sum', got {reduction!r}")
    if states.shape[:2] != labels.shape:
        raise ValueError(f"states {tuple(states.shape)} do not match labels {tuple(labels.shape)}")
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    logits = head(states[:, :-1][keep]).float()  # (N, V), N = trained tokens
    total = F.cross_entropy(logits, targets[keep], reduction="sum") if len(logits) else states.sum() * 0
    return reduce_next_token_loss(total, labels, reduction)


def reduce_next_token_loss(total: Tensor, labels: Tensor, reduction: str) -> Tensor:
    """The summed loss divided as ``reduction`` says (see ``next_token_loss``)."""
    if reduction == "sum":
        return total
    if reduction == "token":
        return total / labels.shape[0]
    return total / trained_tokens(labels).clamp(min=1)  # total is 0 (with a gradient path) when no token is trained
