"""RAG answering with each cache mode, on the tiny random Llama (answers are noise; the mechanics are tested)."""

import logging

import pytest
import torch

from grit import generation
from grit.generation import SamplingParams
from grit.rag.answer import CACHE_MODES, RAG
from grit.rag.documents import Document
from grit.rag.index import Index
from grit.rag.kvstore import KVStore

DOCS = [
    Document("json", "The json module exposes an API familiar to users of marshal and pickle.", "json"),
    Document("logging", "The logging module defines functions and classes for event logging.", "logging"),
    Document("argparse", "The argparse module makes it easy to write command-line interfaces.", "argparse"),
]


@pytest.fixture(scope="module")
def index(tiny_grit):
    return Index.build(DOCS, tiny_grit)


@pytest.mark.parametrize("mode", CACHE_MODES)
def test_every_mode_answers(tiny_grit, index, mode):
    result = RAG(tiny_grit, index, cache_source="bidirectional").answer(
        "Which module logs events?", k=2, cache=mode, max_new_tokens=4
    )
    assert isinstance(result.text, str) and len(result.hits) == 2 and result.cache == mode
    assert (result.cached_tokens > 0) == (mode != "none")
    assert result.prompt_tokens > result.cached_tokens


@pytest.mark.parametrize("mode", ["doc", "query", "doc_query", "query_doc"])
def test_causal_cache_answer_equals_fresh_generation_of_the_same_tokens(tiny_grit, index, mode):
    """With causally computed spans (one span, or several re-rotated but each seeing only itself), the cached
    answer equals generating from scratch over the same token sequence, for single-span layouts exactly."""
    rag = RAG(tiny_grit, index, cache_source="causal")
    question = "What does json expose?"
    result = rag.answer(question, k=1, cache=mode, max_new_tokens=6, temperature=0.0)
    if mode in ("doc", "query"):
        _, layout, _ = rag.prepare(question, 1, mode, 6)
        ids = torch.tensor([layout.ids])
        fresh = generation.generate_text(tiny_grit.lm, tiny_grit.tokenizer, ids, SamplingParams(6))
        assert result.text == fresh


def test_stream_matches_answer(tiny_grit, index):
    rag = RAG(tiny_grit, index)
    hits, pieces = rag.stream("What does json expose?", k=1, cache="doc", max_new_tokens=6)
    assert "".join(pieces) == rag.answer("What does json expose?", k=1, cache="doc", max_new_tokens=6).text
    assert hits[0].doc_id in {d.id for d in DOCS}


def test_kv_store_is_filled_and_a_corrupt_file_is_recomputed(tiny_grit, index, tmp_path, caplog):
    store = KVStore(tmp_path)
    rag = RAG(tiny_grit, index, store)
    first = rag.answer("What does json expose?", k=1, cache="doc", max_new_tokens=5)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    files[0].write_bytes(files[0].read_bytes()[:50])  # truncate it
    with caplog.at_level(logging.WARNING):
        again = RAG(tiny_grit, index, KVStore(tmp_path)).answer("What does json expose?", cache="doc",
                                                               max_new_tokens=5)  # fmt: skip
    assert "recomputed" in caplog.text and again.text == first.text


def test_cache_documents_ahead(tiny_grit, index):
    rag = RAG(tiny_grit, index)
    hits = index.search("json", k=3)
    assert rag.cache_documents(hits) == sum(len(rag.document_span(h)) for h in hits) > 0


def test_bad_requests(tiny_grit, index):
    rag = RAG(tiny_grit, index)
    with pytest.raises(ValueError, match="unknown cache mode 'kv'"):
        rag.answer("q", cache="kv")
    with pytest.raises(ValueError, match="question is empty"):
        rag.answer("  ")
    with pytest.raises(ValueError, match="holds no documents"):
        RAG(tiny_grit, Index(tiny_grit)).answer("q")
    with pytest.raises(ValueError, match="leaves no room"):
        rag.answer("q", max_new_tokens=600)


def test_overlong_question_is_cut_with_a_warning(tiny_grit, index, caplog):
    with caplog.at_level(logging.WARNING):
        result = RAG(tiny_grit, index).answer("word " * 600, k=3, cache="query", max_new_tokens=4)
    assert "cut to" in caplog.text and result.prompt_tokens + 4 <= tiny_grit.context_length
    with pytest.raises(ValueError, match="cache_source"):
        RAG(tiny_grit, index, cache_source="both")


def test_cli_cache_then_ask(tiny_grit, index, tmp_path, capsys):
    from grit.cli import main

    folder = index.save(tmp_path / "idx")
    assert main(["rag", "cache", str(folder)]) == 0
    assert "MB per 1,000 tokens" in capsys.readouterr().out
    assert len(list((folder / "kv-causal").glob("*.safetensors"))) == index.num_chunks
    code = main(["rag", "ask", str(folder), "What does json expose?", "--max-new-tokens", "3", "--show-hits"])
    out = capsys.readouterr().out
    assert code == 0 and "rank" in out and "score" in out
    with pytest.raises(SystemExit):  # argparse refuses an unknown mode with its usage message
        main(["rag", "ask", str(folder), "q", "--cache", "kv"])
