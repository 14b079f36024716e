"""Losses against hand computations on tensors small enough to check on paper."""

import math

import pytest
import torch
import torch.nn.functional as F

from grit.train.losses import IGNORE, contrastive_loss, next_token_loss, next_token_loss_from_states


def xent(scores: list[float], target: int) -> float:
    """-log softmax(scores)[target], written out."""
    return math.log(sum(math.exp(s) for s in scores)) - scores[target]


Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 2 queries
P = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])  # G=2: rows 0,1 -> q0 (pos, hard neg); 2,3 -> q1


def dots(a, b):
    return [[sum(x * y for x, y in zip(r, c, strict=True)) for c in b.tolist()] for r in a.tolist()]


@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_contrastive_loss_with_hard_negatives_by_hand(temperature):
    s = [[v / temperature for v in row] for row in dots(Q, P)]  # (2, 4)
    expected = (xent(s[0], 0) + xent(s[1], 2)) / 2  # positives at rows 0 and 2
    got = contrastive_loss(Q, P, temperature).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_hard_negative_counts():
    # The same queries and positives without the hard negatives: a loss over fewer candidates is smaller.
    without = contrastive_loss(Q, P[[0, 2]], 1.0).item()
    s = dots(Q, P[[0, 2]])
    assert without == pytest.approx((xent(s[0], 0) + xent(s[1], 1)) / 2, rel=1e-5)
    assert without < contrastive_loss(Q, P, 1.0).item()


def test_symmetric_adds_passage_to_query_direction():
    t = 0.5
    s = [[v / t for v in row] for row in dots(Q, P)]
    forward = (xent(s[0], 0) + xent(s[1], 2)) / 2
    r = [[v / t for v in row] for row in dots(P[[0, 2]], Q)]  # each positive against both queries
    backward = (xent(r[0], 0) + xent(r[1], 1)) / 2
    got = contrastive_loss(Q, P, t, symmetric=True).item()
    assert got == pytest.approx((forward + backward) / 2, rel=1e-5)


def test_gathered_passages_with_offset_match_the_full_batch():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(6, 8), dim=-1).requires_grad_()
    p = F.normalize(torch.randn(18, 8), dim=-1)  # G = 3
    full = contrastive_loss(q, p, 0.05)
    full.backward()
    grad_full = q.grad.clone()
    q.grad = None
    # Two "processes" with 3 local queries each, seeing all passages: the mean of their losses is the full loss.
    shards = [contrastive_loss(q[i : i + 3], p, 0.05, group_size=3, offset=i) for i in (0, 3)]
    torch.stack(shards).mean().backward()
    assert torch.stack(shards).mean().item() == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(q.grad, grad_full)


def test_copies_of_a_positive_are_not_its_queries_negatives():
    # Queries 0 and 1 share one positive text (two questions about one passage); query 2 has its own. Without keys
    # each is pushed away from the other's copy of its own positive; with keys those columns are left out, by hand.
    t = 0.5
    q = F.normalize(torch.tensor([[1.0, 0.2], [0.9, 0.4], [0.0, 1.0]]), dim=-1)
    p = F.normalize(torch.tensor([[1.0, 0.3], [1.0, 0.3], [0.1, 1.0]]), dim=-1)  # G = 1: rows 0 and 1 equal texts
    keys = torch.tensor([7, 7, -3])
    s = [[v / t for v in row] for row in dots(q, p)]
    expected = (xent([s[0][0], s[0][2]], 0) + xent([s[1][1], s[1][2]], 0) + xent(s[2], 2)) / 3
    assert contrastive_loss(q, p, t, passage_keys=keys).item() == pytest.approx(expected, rel=1e-5)
    assert contrastive_loss(q, p, t, passage_keys=torch.tensor([1, 2, 3])).item() == pytest.approx(
        contrastive_loss(q, p, t).item(), rel=1e-6
    )  # all distinct: nothing left out
    r = [[v / t for v in row] for row in dots(p, q)]  # symmetric: positives 0 and 1 do not score the other query
    backward = (xent([r[0][0], r[0][2]], 0) + xent([r[1][1], r[1][2]], 0) + xent(r[2], 2)) / 3
    got = contrastive_loss(q, p, t, symmetric=True, passage_keys=keys).item()
    assert got == pytest.approx((expected + backward) / 2, rel=1e-5)


def test_a_hard_negative_equal_to_the_positive_is_left_out():
    p = P.clone()
    p[1] = p[0]  # query 0's hard negative is a copy of its positive (a data error)
    s = dots(Q, p)
    expected = (xent([s[0][0], s[0][2], s[0][3]], 0) + xent(s[1], 2)) / 2
    got = contrastive_loss(Q, p, 1.0, passage_keys=torch.tensor([5, 5, 6, 8])).item()
    assert got == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="passage_keys has shape"):
        contrastive_loss(Q, p, 1.0, passage_keys=torch.tensor([5, 5, 6]))


def test_contrastive_loss_checks_shapes():
    with pytest.raises(ValueError, match="whole number of groups"):
        contrastive_loss(Q, P[:3])
    with pytest.raises(ValueError, match="group_size"):
        contrastive_loss(Q, P, offset=1)
    with pytest.raises(ValueError, match="do not fit"):
        contrastive_loss(Q, P, group_size=2, offset=1)


def test_contrastive_loss_takes_bf16():
    loss = contrastive_loss(Q.bfloat16(), P.bfloat16(), 0.02)
    assert loss.dtype == torch.float32


# --- next-token loss ---------------------------------------------------------------------------------------------

LOGITS = torch.tensor(
    [
        [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 3.0]],
        [[1.0, 1.0, 1.0], [0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
    ]
)  # (B=2, T=4, V=3)
LABELS = torch.tensor([[-100, -100, 2, 1], [-100, 1, 0, -100]])  # sample 0 trains tokens 2, 3; sample 1 tokens 1, 2


def per_token() -> list[list[float]]:
    """Cross-entropy of every trained token: label t is predicted by the logits at t-1."""
    out = []
    for b in range(2):
        out.append([xent(LOGITS[b, t - 1].tolist(), LABELS[b, t].item()) for t in range(1, 4) if LABELS[b, t] >= 0])
    return out


def test_next_token_loss_mixed_is_the_mean_over_the_batch_tokens():
    ce = per_token()
    expected = sum(ce[0] + ce[1]) / 4
    assert next_token_loss(LOGITS, LABELS, "mixed").item() == pytest.approx(expected, rel=1e-5)


def test_next_token_loss_token_is_the_sum_over_batch_size():
    ce = per_token()
    expected = sum(ce[0] + ce[1]) / 2
    assert next_token_loss(LOGITS, LABELS, "token").item() == pytest.approx(expected, rel=1e-5)


def test_mixed_and_token_weigh_short_samples_differently():
    # Sample 0 keeps one trained token, sample 1 two: mixed divides by 3, token by B = 2.
    labels = LABELS.clone()
    labels[0, 2] = -100
    ce = per_token()
    ce[0] = ce[0][1:]
    total = sum(ce[0] + ce[1])
    assert next_token_loss(LOGITS, labels, "mixed").item() == pytest.approx(total / 3, rel=1e-5)
    assert next_token_loss(LOGITS, labels, "token").item() == pytest.approx(total / 2, rel=1e-5)


def test_mixed_matches_transformers_style_shifted_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[:, :3] = -100
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(next_token_loss(logits, labels, "mixed"), reference)


def test_no_trained_token_gives_zero_with_a_gradient():
    logits = torch.randn(2, 4, 3, requires_grad=True)
    loss = next_token_loss(logits, torch.full((2, 4), -100), "mixed")
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None and not logits.grad.isnan().any()


def test_next_token_loss_checks_arguments():
    with pytest.raises(ValueError, match="reduction"):
        next_token_loss(LOGITS, LABELS, "sample")
    with pytest.raises(ValueError, match="do not match"):
        next_token_loss(LOGITS, LABELS[:, :3])


@pytest.mark.parametrize("reduction", ["mixed", "token", "sum"])
def test_loss_from_states_equals_loss_from_full_logits(reduction):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    states = torch.randn(3, 6, 8, requires_grad=True)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, :3] = IGNORE  # a user turn
    labels[2, :] = IGNORE  # a row with nothing trained
    full = next_token_loss(head(states), labels, reduction)
    picked = next_token_loss_from_states(states, head, labels, reduction)
    assert torch.allclose(full, picked, atol=1e-6)
    (g_full,) = torch.autograd.grad(full, states)
    (g_picked,) = torch.autograd.grad(picked, states)
    assert torch.allclose(g_full, g_picked, atol=1e-6)


def test_loss_from_states_with_nothing_trained_is_zero_with_a_gradient_path():
    states = torch.randn(2, 4, 8, requires_grad=True)
    loss = next_token_loss_from_states(states, torch.nn.Linear(8, 5), torch.full((2, 4), IGNORE))
    assert loss.item() == 0 and loss.requires_grad
