"""Packed training batches (grit.packing, ``data.pack``): several texts or conversations per row, each attending only
to itself from position 0, give the losses and gradients of the padded batch up to float round-off."""

import pytest
import torch

from grit import GritModel
from grit.formats import PromptFormat
from grit.likelihood import IGNORE
from grit.packing import packed_hidden_states, unpack
from grit.train.collate import collate_embedding, collate_generative
from grit.train.config import DataConfig, TrainConfig
from grit.train.data import EmbeddingGroup, parse_embedding, parse_generative
from grit.train.distributed import Dist
from grit.train.step import embed, generative

from .trainutil import EMBEDDING_ROWS, GENERATIVE_ROWS

WIDE = 10**6  # a width cost that makes attention free, so every batch packs as tightly as it can


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return GritModel.load(tiny_model_path, dtype="float32", device="cpu")


def chats(model, pack: bool):
    """Six chats of mixed length: one of three turns (the next three chats joined), then five single turns."""
    long = {"text": [turn for row in GENERATIVE_ROWS[1:4] for turn in row["text"]]}
    examples = [parse_generative(r) for r in [long, *GENERATIVE_ROWS[:5]]]
    return collate_generative(model.tokenizer, examples, PromptFormat(), 256, WIDE if pack else 0)


def config(kind: str) -> TrainConfig:
    return TrainConfig(data=DataConfig(["e.jsonl"], ["g.jsonl"]), loss_gen_type=kind)


def grads_of(lm: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    loss.backward()
    out = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
    lm.zero_grad(set_to_none=True)
    return out


def test_packed_generative_batch_holds_the_same_tokens_and_labels(model):
    padded, packed = chats(model, False), chats(model, True)
    assert len(packed.input_ids) < len(padded.input_ids) == packed.sequences == padded.sequences == 6
    assert int(packed.attention_mask.sum()) == int(padded.attention_mask.sum())  # every real token once
    assert int((packed.labels != IGNORE).sum()) == int((padded.labels != IGNORE).sum())
    # Each conversation starts at position 0; nothing before a conversation predicts its first token.
    starts = (packed.positions == 0) & (packed.segments > 0)
    assert int(starts.sum()) == 6 and bool((packed.labels[starts] == IGNORE).all())


@pytest.mark.parametrize("kind", ["mixed", "token"])
def test_packed_next_token_loss_and_gradient_equal_the_padded_ones(model, kind):
    lm, cfg = model.lm, config(kind)
    padded_loss, _ = generative(lm, chats(model, False), cfg, Dist())
    padded = grads_of(lm, padded_loss)
    packed_loss, _ = generative(lm, chats(model, True), cfg, Dist())
    packed = grads_of(lm, packed_loss)
    assert packed_loss.item() == pytest.approx(padded_loss.item(), rel=1e-5)
    assert packed.keys() == padded.keys()
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
def test_packed_hidden_states_equal_padded_ones_on_real_tokens(model, bidirectional):
    from grit.attention import hidden_states

    examples = [parse_embedding(row) for row in EMBEDDING_ROWS[:8]]
    groups = [EmbeddingGroup(ex.query, [ex.pos[0]]) for ex in examples]
    emb = collate_embedding(model.tokenizer, groups, PromptFormat(), 64, 64)
    base = model.lm.base_model
    with torch.no_grad():
        padded = hidden_states(base, emb.passage_ids, emb.passage_padding, bidirectional)
        packed = packed_hidden_states(base, emb.passage_ids, emb.passage_padding, bidirectional)
    assert packed.shape == padded.shape
    real = emb.passage_padding.bool()
    torch.testing.assert_close(packed[real], padded[real], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("pooling", ["mean", "weighted_mean", "last"])
def test_packed_embeddings_give_the_padded_gradient(model, pooling):
    examples = [parse_embedding(row) for row in EMBEDDING_ROWS[:6]]
    groups = [EmbeddingGroup(ex.query, [ex.pos[0], ex.neg[0]]) for ex in examples]
    emb = collate_embedding(model.tokenizer, groups, PromptFormat(), 64, 64)
    lm = model.lm
    inputs = (emb.passage_ids, emb.passage_padding, emb.passage_text)
    target = torch.randn(len(emb.passage_ids), lm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    results = {}
    for pack in (False, True):
        vectors = embed(lm.base_model, *inputs, pooling, True, packed=pack)
        results[pack] = vectors.detach(), grads_of(lm, (vectors * target).sum())
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-4, atol=2e-6)
    for name, grad in results[False][1].items():
        got = results[True][1][name]
        torch.testing.assert_close(got, grad, rtol=1e-3, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_unpack_lays_each_sequence_back_out_from_its_place():
    from grit.packing import pack_batch

    sequences = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]]
    batch = pack_batch(sequences, 0, torch.device("cpu"), WIDE)
    values = batch.ids[..., None].float()  # (R, W, 1): each token's own id
    out = unpack(values, batch, [len(s) for s in sequences])[..., 0]
    for j, s in enumerate(sequences):
        assert out[j, : len(s)].tolist() == s
