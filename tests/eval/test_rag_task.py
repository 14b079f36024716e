"""The RAG evaluation task: corpus from a QA file, recall of the gold passage, answers in every cache mode."""

from __future__ import annotations

import json

import pytest

from grit.eval import BM25Retriever, data
from grit.eval.rag_tasks import RagQATask, corpus, qa_format


def example(n: int, passage: str) -> data.QaExample:
    return data.QaExample(str(n), f"question {n}", ("a",), passage)


def test_corpus_holds_the_gold_passages_first_then_distractors_once_each():
    everything = [example(0, "alpha"), example(1, "beta"), example(2, "alpha"), example(3, "gamma")]
    docs = corpus([everything[3], everything[2]], everything, size=3)
    assert [(d.id, d.text) for d in docs] == [("p0", "gamma"), ("p1", "alpha"), ("p2", "beta")]
    assert len(corpus(everything, everything, None)) == 3  # "alpha" appears twice, indexed once


def test_every_mode_and_source_is_scored(tiny_grit, eval_data):
    task = RagQATask("rag", eval_data / "rag" / "adversarialqa.jsonl", limit=2, max_new_tokens=3, recall_at=(1, 2))
    scores = task.evaluate(tiny_grit)
    passages = {r.passage for r in data.read_rag(task.path)}
    assert scores.n == 2 and scores.details["corpus"] == len(passages)  # all of them: corpus_size is None
    assert 0 <= scores.metrics["recall@1"] <= scores.metrics["recall@2"] <= 1
    cached = [f"{m}/{s}" for m in ("doc", "query", "doc_query", "query_doc") for s in ("causal", "bidirectional")]
    expected = {"recall@1", "recall@2", "none/exact_match", "none/f1", "none/seconds"}
    expected |= {f"{c}/{metric}" for c in cached for metric in ("exact_match", "f1", "seconds", "agree", "agree_f1")}
    assert set(scores.metrics) == expected
    assert all(0 <= scores.metrics[f"{c}/agree"] <= scores.metrics[f"{c}/agree_f1"] <= 1 for c in cached)


def test_retrieval_finds_a_planted_passage(tiny_grit, tmp_path):
    # The question is the passage itself: even a random model's embedding puts it first.
    passages = ["the cat sat on the mat", "stock prices fell sharply", "rain is expected tomorrow"]
    rows = [{"id": str(i), "question": p, "answers": ["x"], "passage": p} for i, p in enumerate(passages)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = RagQATask("rag", path, modes=("none",), cache_sources=("causal",), max_new_tokens=2, recall_at=(1,))
    assert task.evaluate(tiny_grit).metrics["recall@1"] == 1.0


def test_multi_document_rows_index_every_paragraph_and_recall_counts_each_supporting_one(tiny_grit, tmp_path):
    # Each question is its second supporting paragraph word for word: even a random model's embedding ranks that one
    # first, so recall@1 is exactly one of two supporting paragraphs.
    paragraphs = [["the cat sat on the mat", "cats like warm mats", "stock prices fell"],
                  ["rain is expected tomorrow", "umbrellas sell well in rain", "the match was a draw"]]  # fmt: skip
    rows = [{"id": f"h{i}", "question": ps[1], "answers": ["x"], "passage": " ".join(ps[:2]), "passages": ps,
             "supporting": [0, 1]} for i, ps in enumerate(paragraphs)]  # fmt: skip
    path = tmp_path / "hotpot.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = data.read_rag(path)
    assert read[0].documents == tuple(paragraphs[0]) and read[0].gold == tuple(paragraphs[0][:2])
    task = RagQATask("hotpot", path, k=2, modes=("none", "doc"), cache_sources=("causal",), max_new_tokens=2,
                     recall_at=(1, 6))  # fmt: skip
    scores = task.evaluate(tiny_grit)
    assert scores.details["corpus"] == 6  # every paragraph of every row, not the joined passage
    assert scores.metrics["recall@1"] == 0.5 and scores.metrics["recall@6"] == 1.0
    bad = dict(rows[0], supporting=[5])
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(data.DataFormatError, match="hotpot.jsonl:1.*supporting.*indices of its 3 passages"):
        data.read_rag(path)


def test_settings_are_checked_and_only_grit_models_take_part(tiny_grit, tmp_path):
    with pytest.raises(ValueError, match="unknown cache modes"):
        RagQATask("rag", tmp_path, modes=("none", "everything"))
    with pytest.raises(ValueError, match="unknown cache sources"):
        RagQATask("rag", tmp_path, cache_sources=("sideways",))
    task = RagQATask("rag", tmp_path)
    assert task.supports(tiny_grit) and not task.supports(BM25Retriever())
    assert task.limited(3).limit == 3 and task.limited(3).limited(5).limit == 3


def test_qa_format_asks_for_a_short_answer_in_every_layout():
    fmt = qa_format()
    for name in ("docs_then_question", "after_docs", "after_question", "after_docs_question", "after_question_docs"):
        assert getattr(fmt, name).endswith("the shortest span of the context that answers it.")
