import torch

from grit.attention import bidirectional_mask, hidden_states, positions


def _states(model, ids, bidirectional):
    return hidden_states(model.lm.base_model, ids, torch.ones_like(ids), bidirectional)


def test_bidirectional_is_real(tiny_grit):
    """Changing the last token changes the first token's state in embedding mode, and not in generation mode."""
    a = torch.tensor([[10, 11, 12, 13, 14]])
    b = torch.tensor([[10, 11, 12, 13, 99]])
    with torch.no_grad():
        bi_diff = (_states(tiny_grit, a, True)[0, 0] - _states(tiny_grit, b, True)[0, 0]).abs().max()
        causal_diff = (_states(tiny_grit, a, False)[0, 0] - _states(tiny_grit, b, False)[0, 0]).abs().max()
    assert bi_diff > 1e-4, f"bidirectional first-token change {bi_diff}"
    assert causal_diff < 1e-6, f"causal first-token change {causal_diff}"


def test_causal_mode_matches_plain_forward(tiny_grit):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        ours = _states(tiny_grit, ids, False)
        plain = tiny_grit.lm.base_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)


def test_mask_hides_padding_keys():
    padding = torch.tensor([[1, 1, 0], [1, 1, 1]])
    mask = bidirectional_mask(padding, torch.float32)
    assert mask.shape == (2, 1, 3, 3)
    assert (mask[0, 0, :, 2] == torch.finfo(torch.float32).min).all()
    assert (mask[0, 0, :, :2] == 0).all() and (mask[1] == 0).all()


def test_positions_skip_left_padding():
    assert positions(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]
