"""GradCache gives the gradients of the whole batch at once, and replays dropout masks exactly per chunk."""

import pytest
import torch

from grit import GritModel
from grit.formats import PromptFormat
from grit.train import gradcache
from grit.train.build import add_lora
from grit.train.collate import collate_embedding
from grit.train.config import DataConfig, LoraConfig, TrainConfig
from grit.train.data import EmbeddingGroup, parse_embedding
from grit.train.distributed import Dist
from grit.train.gradcache import chunks, gradcache_backward
from grit.train.losses import contrastive_loss
from grit.train.step import embed, micro_step

from .trainutil import EMBEDDING_ROWS


@pytest.fixture(scope="module")
def batch(tiny_grit):
    """8 queries, 16 passages (positive + hard negative each)."""
    examples = [parse_embedding(row) for row in EMBEDDING_ROWS[:8]]
    groups = [EmbeddingGroup(ex.query, [ex.pos[0], ex.neg[0]]) for ex in examples]
    return collate_embedding(tiny_grit.tokenizer, groups, PromptFormat(), 64, 64)


def config(**options) -> TrainConfig:
    return TrainConfig(mode="embedding", data=DataConfig(["e.jsonl"], embedding_batch_size=8), **options)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(got: dict, expected: dict, tol: float = 1e-5) -> None:
    assert got.keys() == expected.keys() and got
    for name in expected:
        diff = (got[name] - expected[name]).abs().max().item()
        scale = expected[name].abs().max().item()
        assert diff <= tol * max(scale, 1.0), f"{name}: max_diff {diff:.2e} (largest gradient {scale:.2e})"


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcache_gives_the_full_batch_gradients(tiny_model_path, batch, symmetric):
    lm = GritModel.load(tiny_model_path, dtype="float32", device="cpu").lm.train()
    full = micro_step(lm, batch, None, config(symmetric=symmetric), Dist())
    expected = grads(lm)
    # Chunks of 3: queries split 3+3+2, passages 3*5+1, so uneven last chunks are covered.
    cached = micro_step(lm, batch, None, config(symmetric=symmetric, gradcache_chunk_size=3), Dist())
    assert cached.emb == pytest.approx(full.emb, rel=1e-6)
    assert cached.tokens == full.tokens
    assert_same_grads(grads(lm), expected)


def test_gradcache_replays_each_chunks_dropout_masks(tiny_model_path, batch, monkeypatch):
    lm = GritModel.load(tiny_model_path, dtype="float32", device="cpu").lm
    add_lora(lm, LoraConfig(r=4, dropout=0.5))
    lm.train()
    inputs = [(batch.query_ids, batch.query_padding, batch.query_text),
              (batch.passage_ids, batch.passage_padding, batch.passage_text)]  # fmt: skip

    def encode(ids, padding, text):
        return embed(lm.base_model, ids, padding, text, "mean", True)

    def loss_fn(q, p):
        return contrastive_loss(q, p, 0.05)

    def run_gradcache(seed):
        torch.manual_seed(seed)
        gradcache_backward(encode, inputs, loss_fn, chunk_size=3)
        return grads(lm)

    # Reference: the same chunks in the same order embedded with gradients, so the same dropout masks are drawn.
    torch.manual_seed(0)
    loss_fn(*(torch.cat([encode(*c) for c in chunks(x, 3)]) for x in inputs)).backward()
    expected = grads(lm)
    assert_same_grads(run_gradcache(0), expected)
    with pytest.raises(AssertionError, match="max_diff"):  # dropout is on: another seed gives other gradients
        assert_same_grads(run_gradcache(1), expected)
    monkeypatch.setattr(gradcache.TorchRng, "restore", lambda self: None)
    with pytest.raises(AssertionError, match="max_diff"):  # and without the RNG replay the re-forward differs
        assert_same_grads(run_gradcache(0), expected)


def test_chunks_cut_trailing_padding():
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 0, 0, 0]])
    padding = (ids > 0).long()
    parts = chunks((ids, padding, padding), 2)
    assert [p[0].tolist() for p in parts] == [[[1, 2, 3], [4, 5, 0]], [[6]]]
