"""One micro-step: the losses it reports and the gradients it leaves are those of GRIT's summed loss. One
optimizer step: the gradient it applies is clipped over the sum, or per loss with ``clip_per_loss``."""

import pytest
import torch

from grit import GritModel
from grit.formats import PromptFormat
from grit.train.collate import collate_embedding, collate_generative
from grit.train.config import DataConfig, TrainConfig
from grit.train.data import EmbeddingGroup, parse_embedding, parse_generative
from grit.train.distributed import Dist
from grit.train.losses import contrastive_loss, next_token_loss, trained_tokens
from grit.train.step import embed, generative, micro_step
from grit.train.trainer import optimizer_step

from .trainutil import EMBEDDING_ROWS, GENERATIVE_ROWS


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return GritModel.load(tiny_model_path, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def batches(model):
    examples = [parse_embedding(row) for row in EMBEDDING_ROWS[:4]]
    groups = [EmbeddingGroup(ex.query, [ex.pos[0], ex.neg[0]]) for ex in examples]
    emb = collate_embedding(model.tokenizer, groups, PromptFormat(), 64, 64)
    gen = collate_generative(model.tokenizer, [parse_generative(r) for r in GENERATIVE_ROWS[:4]], PromptFormat(), 96)
    return emb, gen


def config(**options) -> TrainConfig:
    return TrainConfig(data=DataConfig(["e.jsonl"], ["g.jsonl"], embedding_batch_size=4), **options)


@pytest.mark.parametrize("kind", ["mixed", "token"])
def test_generative_loss_alone_is_next_token_loss(model, batches, kind):
    _, gen = batches
    with torch.no_grad():
        logits = model.lm(input_ids=gen.input_ids, attention_mask=gen.attention_mask).logits
        got, kl = generative(model.lm, gen, config(loss_gen_type=kind), Dist())
    assert kl.rag is None and kl.chat is None
    assert got.item() == pytest.approx(next_token_loss(logits, gen.labels, kind).item(), rel=1e-6)
    total = next_token_loss(logits, gen.labels, "sum")
    assert total.item() == pytest.approx(next_token_loss(logits, gen.labels).item() * trained_tokens(gen.labels))


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_unified_micro_step_is_the_gradient_of_the_weighted_sum(model, batches, pack):
    """Against the padded computation written out; packed embedding rows differ from it by float round-off only
    (the generative batch here stays padded: tests/train/test_packing.py packs it)."""
    emb, gen = batches
    lm = model.lm
    cfg = config(loss_gen_factor=0.5, temperature=0.05)
    cfg.data.pack = pack
    m = micro_step(lm, emb, gen, cfg, Dist(), scale=0.25)
    got = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad(set_to_none=True)
    q = embed(lm.base_model, emb.query_ids, emb.query_padding, emb.query_text, "mean", True)
    p = embed(lm.base_model, emb.passage_ids, emb.passage_padding, emb.passage_text, "mean", True)
    logits = lm(input_ids=gen.input_ids, attention_mask=gen.attention_mask).logits
    loss_emb, loss_gen = contrastive_loss(q, p, 0.05), next_token_loss(logits, gen.labels)
    (0.25 * (loss_emb + 0.5 * loss_gen)).backward()
    assert m.emb == pytest.approx(loss_emb.item(), rel=1e-6) and m.gen == pytest.approx(loss_gen.item(), rel=1e-6)
    assert m.tokens == int(emb.query_padding.sum() + emb.passage_padding.sum() + gen.attention_mask.sum())
    atol = 2e-6 if pack else 1e-7
    for name, param in lm.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-4 if pack else 1e-5, atol=atol,
                                   msg=lambda msg, n=name: f"{n}: {msg}")  # fmt: skip
    lm.zero_grad(set_to_none=True)


def gradient_of(lm: torch.nn.Module, emb, gen, cfg: TrainConfig) -> list[torch.Tensor]:
    micro_step(lm, emb, gen, cfg, Dist())
    grads = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad(set_to_none=True)
    return grads


def clipped(grads: list[torch.Tensor], limit: float) -> tuple[list[torch.Tensor], float]:
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
    return [g * min(1.0, limit / norm) for g in grads], norm


@pytest.mark.parametrize("per_loss", [False, True])
def test_optimizer_step_clips_the_sum_or_each_loss(tiny_model_path, batches, per_loss):
    emb, gen = batches
    lm = GritModel.load(tiny_model_path, dtype="float32", device="cpu").lm  # its own copy: this test moves weights
    limit = 1e-3  # below both gradients' norms, so both ways clip
    cfg = config(loss_gen_factor=0.5, max_grad_norm=limit, clip_per_loss=per_loss)
    g_emb, g_gen = gradient_of(lm, emb, None, cfg), gradient_of(lm, None, gen, cfg)
    (c_emb, n_emb), (c_gen, n_gen) = clipped(g_emb, limit), clipped(g_gen, limit)
    if per_loss:
        expected = [a + b for a, b in zip(c_emb, c_gen, strict=True)]
    else:
        expected, _ = clipped([a + b for a, b in zip(g_emb, g_gen, strict=True)], limit)
    params = list(lm.parameters())
    before = [p.detach().clone() for p in params]
    rate = 1e3  # SGD: each weight moves by -rate * the applied gradient, far above float32 rounding of the weight
    optimizer = torch.optim.SGD(params, lr=rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    trainee = type("Trainee", (), {"lm": lm, "compute_dtype": torch.float32})()
    record = optimizer_step(trainee, lambda: (emb, gen), optimizer, scheduler, params, cfg, Dist())
    assert record["grad_norm_emb"] == pytest.approx(n_emb, rel=1e-4)
    assert record["grad_norm_gen"] == pytest.approx(n_gen, rel=1e-4)
    assert min(n_emb, n_gen) > limit  # else the two ways would not differ
    for old, new, want in zip(before, params, expected, strict=True):
        torch.testing.assert_close(old - new.detach(), rate * want, rtol=1e-3, atol=1e-5)
