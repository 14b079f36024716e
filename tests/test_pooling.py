import pytest
import torch

from grit.pooling import pool

H = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)  # (B=2, T=3, H=4)
TEXT = torch.tensor([[0, 1, 1], [1, 1, 0]])  # row 0: token 0 is instruction; row 1: token 2 is padding


def test_mean_uses_text_tokens_only():
    torch.testing.assert_close(pool(H, TEXT, "mean"), torch.stack([H[0, 1:].mean(0), H[1, :2].mean(0)]))


def test_weighted_mean_weights_later_tokens_more():
    expected = torch.stack([(1 * H[0, 1] + 2 * H[0, 2]) / 3, (1 * H[1, 0] + 2 * H[1, 1]) / 3])
    torch.testing.assert_close(pool(H, TEXT, "weighted_mean"), expected)


def test_last_and_cls_pick_text_ends():
    torch.testing.assert_close(pool(H, TEXT, "last"), torch.stack([H[0, 2], H[1, 1]]))
    torch.testing.assert_close(pool(H, TEXT, "cls"), torch.stack([H[0, 1], H[1, 0]]))


def test_unknown_pooling_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool(H, TEXT, "max")


def test_empty_text_mask_is_refused():
    with pytest.raises(ValueError, match="no tokens to pool"):
        pool(H, torch.tensor([[0, 0, 0], [1, 0, 0]]), "mean")
