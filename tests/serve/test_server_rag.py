"""``POST /v1/rag``: retrieval and a cached answer from a served index, whole or streamed."""

from __future__ import annotations

import pytest

from grit.rag.answer import RAG
from grit.rag.documents import Document
from grit.rag.index import Index
from grit.serve.app import create_app
from grit.serve.config import ServeConfig

from .serveutil import MODEL, assert_error_body, httpx, serve, sse_data

DOCS = [
    Document("json", "The json module exposes an API familiar to users of marshal and pickle.", "json"),
    Document("logging", "The logging module defines functions and classes for event logging.", "logging"),
    Document("argparse", "The argparse module makes it easy to write command-line interfaces.", "argparse"),
]
QUESTION = "What does json expose?"


@pytest.fixture(scope="module")
def rag(tiny_grit):
    return RAG(tiny_grit, Index.build(DOCS, tiny_grit))


@pytest.fixture(scope="module")
def rag_url(tiny_grit, rag):
    with serve(create_app(tiny_grit, ServeConfig(model_name=MODEL), rag)) as running:
        yield running.url


@pytest.mark.parametrize("mode", ["doc", "none", "query_doc"])
def test_rag_answer_equals_the_library_answer(rag_url, rag, mode):
    body = {"question": QUESTION, "k": 1, "cache": mode, "max_tokens": 8}
    response = httpx.post(f"{rag_url}/v1/rag", json=body)
    assert response.status_code == 200, response.text
    got = response.json()
    expected = rag.answer(QUESTION, 1, mode, max_new_tokens=8)
    assert got["answer"] == expected.text
    assert got["cache"] == mode and got["finish_reason"] == expected.finish_reason
    assert [d["id"] for d in got["documents"]] == [h.doc_id for h in expected.hits]
    assert got["documents"][0]["score"] == pytest.approx(float(expected.hits[0].score), abs=1e-5)
    assert got["documents"][0]["text"] == expected.hits[0].text
    usage = got["usage"]
    assert usage["completion_tokens"] == expected.completion_tokens
    assert usage["prompt_tokens"] == expected.prompt_tokens
    assert usage["cached_tokens"] == expected.cached_tokens and (usage["cached_tokens"] > 0) == (mode != "none")


def test_rag_returns_k_documents_best_first(rag_url):
    body = httpx.post(f"{rag_url}/v1/rag", json={"question": QUESTION, "k": 3, "max_tokens": 2}).json()
    scores = [d["score"] for d in body["documents"]]
    assert sorted(d["id"] for d in body["documents"]) == sorted(d.id for d in DOCS)
    assert scores == sorted(scores, reverse=True)
    assert body["cache"] == "doc"  # the server's default mode


@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_rag_recompute_ratio_is_honoured(rag_url, rag, ratio):
    body = {"question": QUESTION, "k": 3, "cache": "doc", "max_tokens": 8, "recompute_ratio": ratio}
    got = httpx.post(f"{rag_url}/v1/rag", json=body).json()
    assert got["answer"] == rag.answer(QUESTION, 3, "doc", max_new_tokens=8, recompute_ratio=ratio).text


def test_a_full_recompute_answers_as_one_fresh_pass_over_the_same_prompt(tiny_grit, rag):
    from grit.generation import SamplingParams

    _, layout, _ = rag.prepare(QUESTION, 3, "doc", 8)
    fresh = tiny_grit.complete(tiny_grit.as_ids(layout.ids), SamplingParams(8))
    assert rag.answer(QUESTION, 3, "doc", max_new_tokens=8, recompute_ratio=1.0).text == fresh.text
    with pytest.raises(ValueError, match="recompute_ratio must be between 0 and 1"):
        rag.answer(QUESTION, 3, "doc", max_new_tokens=8, recompute_ratio=2.0)


@pytest.mark.parametrize("ratio", [-0.1, 1.5, "half"])
def test_rag_recompute_ratio_outside_0_to_1_is_400(rag_url, ratio):
    body = {"question": QUESTION, "recompute_ratio": ratio}
    error = assert_error_body(httpx.post(f"{rag_url}/v1/rag", json=body), 400, "invalid_request_error")
    assert "recompute_ratio" in error["param"] or "recompute_ratio" in error["message"]


def test_rag_unknown_cache_mode_is_400(rag_url):
    response = httpx.post(f"{rag_url}/v1/rag", json={"question": QUESTION, "cache": "kv"})
    assert "unknown cache mode" in assert_error_body(response, 400, "invalid_request_error")["message"]


def test_rag_empty_question_is_400(rag_url):
    assert_error_body(httpx.post(f"{rag_url}/v1/rag", json={"question": "  "}), 400, "invalid_request_error")


def test_rag_stream_sends_documents_then_the_answer(rag_url, rag):
    body = {"question": QUESTION, "k": 1, "cache": "doc", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{rag_url}/v1/rag", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_data(response.iter_lines()))
    expected = rag.answer(QUESTION, 1, "doc", max_new_tokens=8)
    first, chunks, done = events[0], events[1:-1], events[-1]
    assert first["object"] == "rag.documents"
    assert [d["id"] for d in first["documents"]] == [h.doc_id for h in expected.hits]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == expected.text
    assert chunks[-1]["choices"][0]["finish_reason"] == expected.finish_reason
    assert done == "[DONE]"


def test_rag_model_card_lists_the_capability(rag_url):
    assert "rag" in httpx.get(f"{rag_url}/v1/models").json()["data"][0]["capabilities"]


def test_without_an_index_rag_is_404(http):
    response = http.post("/v1/rag", json={"question": QUESTION})
    assert_error_body(response, 404, "not_found_error")
    assert "rag" not in http.get("/v1/models").json()["data"][0]["capabilities"]
