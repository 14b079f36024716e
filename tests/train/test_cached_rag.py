"""Cache-aware RAG rows (issue 22): passage-QA rows in the generative data train the model to answer from documents
laid out as ``RAG`` reads them from cache, each document a block attending only to itself. The training forward
over such a row must compute what joined span caches give at inference, and its tokens must be the ones RAG runs."""

import gzip
import json

import pytest
import torch

from grit.formats import PromptFormat
from grit.jsonl import DataFormatError
from grit.kvcache import compute_cache, logits_on_cache
from grit.packing import attention_width, segment_mask
from grit.rag.modes import RagFormat
from grit.train.collate import collate_generative
from grit.train.config import DataConfig, TrainConfig
from grit.train.data import Batch, drop_short_answers, generative_examples, read_generative_files
from grit.train.distributed import Dist
from grit.train.step import Term, distillation, generative, micro_step, rag_tail

ROWS = [
    {"question": "Which module logs events?", "answers": ["logging"], "passage": "The logging module logs events."},
    {"question": "What parses arguments?", "answers": ["", "argparse"], "passage": "argparse parses command lines."},
    {"question": "What encodes data?", "answer": "json", "passage": "The json module encodes data as text."},
    {"question": "Which module handles paths?", "answers": "pathlib", "passage": "pathlib offers paths as objects."},
]
FMT = PromptFormat()


def write_rows(path, rows):
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    (ds,) = read_generative_files([write_rows(tmp_path_factory.mktemp("rag") / "qa.jsonl.gz", ROWS)])
    return ds


def test_a_passage_qa_row_reads_as_a_chat_about_its_passage(dataset):
    first = dataset.examples[0]
    assert first.passages == ["The logging module logs events."] and first.passage_attention == "bidirectional"
    assert first.conversation == [
        {"role": "user", "content": RagFormat().after_docs.format(question="Which module logs events?")},
        {"role": "assistant", "content": "logging"},
    ]
    assert [ex.conversation[1]["content"] for ex in dataset.examples] == ["logging", "argparse", "json", "pathlib"]
    drop_short_answers([dataset], 5)  # one-word answers stay: extractive answers are short by nature
    assert len(dataset) == 4


@pytest.mark.parametrize(
    "row, match",
    [
        ({"question": "q", "passage": "p", "answers": [""]}, "no answer"),
        ({"question": "q", "passage": "p"}, "answers must be"),
        ({"question": " ", "passage": "p", "answers": ["a"]}, "question must be a non-empty string"),
        ({"question": "q", "passage": 3, "answers": ["a"]}, "passage must be a non-empty string"),
        ({"question": "q", "passage": "p", "answers": [1]}, "answers must be"),
    ],
)
def test_a_bad_passage_qa_row_is_refused_with_its_line(tmp_path, row, match):
    path = write_rows(tmp_path / "qa.jsonl.gz", [ROWS[0], row])
    with pytest.raises(DataFormatError, match=f"qa.jsonl.gz:2.*{match}"):
        read_generative_files([path])


@pytest.mark.parametrize("k", [1, 3, 4, 9])
def test_rows_get_their_passage_and_distractors_in_a_fixed_random_order(dataset, k):
    batch = Batch(0, 0, ((0, 0), (0, 2)))
    examples = generative_examples([dataset], batch, seed=5, passages=k)
    assert examples == generative_examples([dataset], batch, seed=5, passages=k)  # fixed by position
    for ex, own in zip(examples, (0, 2), strict=True):
        assert len(ex.passages) == min(k, 4) == len(set(ex.passages))  # the file has 4 distinct passages
        assert ROWS[own]["passage"] in ex.passages
    assert dataset.examples[0].passages == [ROWS[0]["passage"]]  # the data set is not changed
    orders = {tuple(generative_examples([dataset], Batch(e, 0, ((0, 1),)), passages=4)[0].passages) for e in range(8)}
    assert len(orders) > 1  # the gold passage is not always in one place


def test_mixed_attention_picks_either_source_per_row(dataset):
    seen = {generative_examples([dataset], Batch(e, 0, ((0, 1),)), attention="mixed")[0].passage_attention
            for e in range(12)}  # fmt: skip
    assert seen == {"bidirectional", "causal"}


def test_the_row_holds_the_tokens_rag_runs(tiny_grit, dataset):
    """Documents as the index embeds them (their cached spans), then the turn RAG puts after them, then the answer:
    the only trained tokens."""
    (ex,) = generative_examples([dataset], Batch(0, 0, ((0, 0),)), passages=2)
    batch = collate_generative(tiny_grit.tokenizer, [ex], FMT, 128, 0, 64)
    ids, labels, blocks = batch.input_ids[0].tolist(), batch.labels[0].tolist(), batch.blocks[0].tolist()
    docs = [tiny_grit.embedding_ids(p) for p in ex.passages]
    prompt = tiny_grit.chat_ids(ex.conversation[:1], before="\n")  # what RAG runs after the cached documents
    n = sum(len(d) for d in docs)
    assert ids[:n] == docs[0] + docs[1] and blocks[:n] == [1] * len(docs[0]) + [2] * len(docs[1])
    assert ids[n : n + len(prompt)] == prompt and set(blocks[n:]) == {0}
    trained = tiny_grit.tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    assert trained.startswith("logging") and all(lab == -100 for lab in labels[: n + len(prompt)])
    assert batch.positions[0].tolist() == list(range(len(ids)))


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_the_training_forward_equals_joined_span_caches(tiny_grit, dataset, attention, pack):
    """The logits the loss sees over the chat equal those RAG computes on the joined, re-rotated caches of the
    documents (each computed on its own from position 0), for either cache source, packed or not."""
    lm = tiny_grit.lm
    examples = generative_examples([dataset], Batch(0, 0, ((0, 0), (0, 3))), passages=3, attention=attention)
    width_cost = attention_width(lm.config) if pack else 0
    batch = collate_generative(tiny_grit.tokenizer, examples, FMT, 128, width_cost, 64)
    with torch.no_grad():
        mask = segment_mask(batch.segments, True, lm.dtype, batch.blocks)
        logits = lm(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.positions).logits
    for j, ex in enumerate(examples):
        docs = [tiny_grit.embedding_ids(p) for p in ex.passages]
        spans = [compute_cache(lm.base_model, d, attention) for d in docs]
        where = (batch.segments == j + 1) if pack else (batch.attention_mask.bool() & (torch.arange(2) == j)[:, None])
        row, cols = (int(x) for x in where.nonzero()[0])
        start = cols + sum(len(d) for d in docs)
        tail = batch.input_ids[row, start : cols + int(where.sum())].tolist()
        cached = logits_on_cache(lm, spans, tail)
        assert (logits[row, start : start + len(tail)] - cached).abs().max().item() < 1e-4


def test_rows_train_beside_chats_in_one_step(tiny_model_path, dataset):
    """A cache-aware row in a generative batch with a chat: the step's loss is finite, the same packed or padded,
    and gives gradients."""
    from grit import GritModel

    model = GritModel.load(tiny_model_path, dtype="float32", device="cpu")
    chat = read_generative_files([write_rows(dataset.path.with_name("chat.jsonl.gz"),
                                             [{"text": ["Name a module.", "The json module."]}])])[0]  # fmt: skip
    examples = generative_examples([dataset, chat], Batch(0, 0, ((0, 1), (1, 0))), passages=2)
    losses = []
    for width_cost in (0, attention_width(model.lm.config)):
        batch = collate_generative(model.tokenizer, examples, FMT, 128, width_cost, 64)
        cfg = TrainConfig(mode="generative", data=DataConfig(generative_files=["g.jsonl"], pack=bool(width_cost)))
        with torch.no_grad():
            loss, kl = generative(model.lm, batch, cfg, Dist())
            assert kl.rag is None  # data.rag_distill is 0
            losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 0
    model.lm.zero_grad()
    micro_step(model.lm, None, batch, cfg, Dist())
    grads = [p.grad for p in model.lm.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_rag_options_are_checked():
    with pytest.raises(ValueError, match="rag_passages must be >= 1"):
        DataConfig(generative_files=["g.jsonl"], rag_passages=0)
    with pytest.raises(ValueError, match="rag_cache_attention must be one of"):
        DataConfig(generative_files=["g.jsonl"], rag_cache_attention="both")


def distillation_batch(tiny_grit, dataset, passages, attention, pack):
    chat = read_generative_files([write_rows(dataset.path.with_name("chat2.jsonl.gz"),
                                             [{"text": ["Name a module.", "The json module."]}])])[0]  # fmt: skip
    examples = generative_examples([dataset, chat], Batch(0, 0, ((0, 1), (1, 0), (0, 2))), passages=passages,
                                   attention=attention)  # fmt: skip
    width_cost = attention_width(tiny_grit.lm.config) if pack else 0
    return collate_generative(tiny_grit.tokenizer, examples, FMT, 128, width_cost, 64)


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_the_distillation_tail_is_the_question_and_answer_of_rag_rows(tiny_grit, dataset, pack):
    batch = distillation_batch(tiny_grit, dataset, 2, "bidirectional", pack)
    tail = rag_tail(batch)
    kinds = []
    for row in range(batch.segments.shape[0]):  # each conversation: a segment of a row (padded: one per row)
        for seg in batch.segments[row].unique().tolist():
            if seg == 0:
                continue
            mine = torch.zeros_like(tail)
            mine[row] = batch.segments[row] == seg
            rag = bool((mine & (batch.blocks != 0)).any())
            kinds.append(rag)
            assert torch.equal(tail & mine, mine & (batch.blocks == 0) if rag else torch.zeros_like(mine))
    assert sorted(kinds) == [False, True, True] and tail.any()


def student_distillation(lm, batch):
    """``distillation`` with the student logits of the block-masked forward, as ``generative`` passes them."""
    inputs = {"input_ids": batch.input_ids, "use_cache": False, "position_ids": batch.positions,
              "attention_mask": segment_mask(batch.segments, True, lm.dtype, batch.blocks)}  # fmt: skip
    tail = rag_tail(batch)
    return distillation(lm, batch, inputs, {"rag": lm(**inputs).logits[tail]}, {"rag": Term(1.0, tail, None)},
                        Dist())["rag"]  # fmt: skip


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_distillation_is_zero_where_cached_reading_is_exact_and_trains_only_the_student(tiny_grit, dataset, pack):
    """One causal document per row is read exactly as a full prefill: no divergence. Bidirectional documents are
    not: a positive term, whose gradient comes from the block-masked (student) pass alone."""
    lm = tiny_grit.lm
    for passages, attention, exact in ((1, "causal", True), (2, "causal", False), (2, "bidirectional", False)):
        batch = distillation_batch(tiny_grit, dataset, passages, attention, pack)
        with torch.no_grad():
            kl = student_distillation(lm, batch).item()
        assert (kl < 1e-8) if exact else (kl > 1e-6), (passages, attention, kl)
    base = TrainConfig(mode="generative", data=DataConfig(generative_files=["g.jsonl"], pack=pack))
    with_kl = TrainConfig(mode="generative", data=DataConfig(generative_files=["g.jsonl"], pack=pack, rag_distill=2.0))
    with torch.no_grad():
        (plain, no_kl), (distilled, logged) = (generative(lm, batch, c, Dist()) for c in (base, with_kl))
    assert no_kl.rag is None and logged.rag.item() == pytest.approx(kl, rel=1e-4) and logged.chat is None
    assert distilled.item() == pytest.approx(plain.item() + 2.0 * kl, rel=1e-4)
    assert micro_step(lm, None, batch, with_kl, Dist()).kls == {"rag": pytest.approx(kl, rel=1e-4)}
    lm.zero_grad()
    loss = student_distillation(lm, batch)
    loss.backward()
    grads = [p.grad for p in lm.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    lm.zero_grad()


def test_rag_distill_must_not_be_negative():
    with pytest.raises(ValueError, match="rag_distill must be >= 0"):
        DataConfig(generative_files=["g.jsonl"], rag_distill=-1.0)


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_without_the_answer_loss_rag_rows_train_through_the_distillation_alone(tiny_grit, dataset, pack):
    """data.rag_answer_loss=false: the batch's next-token loss is its chat's alone (the cache-aware rows' answers
    are not labelled), and the rows still add data.rag_distill times their KL."""
    lm = tiny_grit.lm
    batch = distillation_batch(tiny_grit, dataset, 2, "bidirectional", pack)
    chat = read_generative_files([dataset.path.with_name("chat2.jsonl.gz")])[0]
    width_cost = attention_width(lm.config) if pack else 0
    chat_only = collate_generative(tiny_grit.tokenizer, generative_examples([chat], Batch(0, 0, ((0, 0),))), FMT,
                                   128, width_cost, 64)  # fmt: skip
    data = {"generative_files": ["g.jsonl"], "pack": pack, "rag_distill": 2.0}
    answers, distilled_only = (TrainConfig(mode="generative", data=DataConfig(**data, rag_answer_loss=keep))
                               for keep in (True, False))  # fmt: skip
    with torch.no_grad():
        chat_loss, _ = generative(lm, chat_only, answers, Dist())
        with_answers, _ = generative(lm, batch, answers, Dist())
        loss, kl = generative(lm, batch, distilled_only, Dist())
    assert kl.rag.item() > 1e-6
    assert loss.item() == pytest.approx(chat_loss.item() + 2.0 * kl.rag.item(), rel=1e-4)
    assert abs(with_answers.item() - loss.item()) > 1e-4  # the answers' loss was there to remove


def test_without_the_answer_loss_the_distillation_is_required():
    with pytest.raises(ValueError, match="rag_answer_loss=false needs data.rag_distill > 0"):
        DataConfig(generative_files=["g.jsonl"], rag_answer_loss=False)
    assert not DataConfig(generative_files=["g.jsonl"], rag_answer_loss=False, rag_distill=0.5).rag_answer_loss
