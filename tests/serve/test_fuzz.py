"""Hostile and careless requests against a live server (tiny model, every route, /v1/rag included).

Two parts: the requests a fuzz of ``grit serve`` once answered wrongly (a 500, or a silent 200 for something grit
does not honour), each with the answer it must get; and a generated table of several hundred requests, every field
of every route set to values of the wrong type, out of range, invalid Unicode or huge, plus broken raw bodies. Every
answer must be 2xx or 4xx with an OpenAI error body, never 5xx, and the server must serve a normal request after.
"""

from __future__ import annotations

import json

import pytest

from grit.rag.answer import RAG
from grit.rag.documents import Document
from grit.rag.index import Index
from grit.serve.app import create_app
from grit.serve.config import ServeConfig

from .serveutil import API_KEY, MODEL, assert_error_body, httpx, serve

USER = [{"role": "user", "content": "Say hello."}]
DOCS = [Document("json", "The json module exposes an API familiar to users of marshal and pickle.", "json")]
ROUTES = {
    "/v1/embeddings": {"input": "a text", "model": MODEL},
    "/v1/chat/completions": {"messages": USER, "max_tokens": 2},
    "/v1/completions": {"prompt": "Once", "max_tokens": 2},
    "/v1/rag": {"question": "What does json expose?", "max_tokens": 2},
}


@pytest.fixture(scope="module")
def hostile(tiny_grit):
    """A server with an index and small limits, so hostile requests cross them cheaply."""
    config = ServeConfig(model_name=MODEL, api_key=API_KEY, max_tokens_cap=8, max_input_tokens=48, max_inputs=16,
                         max_body_bytes=200_000, log_requests=False)  # fmt: skip
    rag = RAG(tiny_grit, Index.build(DOCS, tiny_grit))
    with serve(create_app(tiny_grit, config, rag)) as running:
        with httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
            yield running, c


def post_raw(client, path: str, content: bytes):
    return client.post(path, content=content, headers={"Content-Type": "application/json"})


def post(client, path: str, body: dict):
    """POST ``body`` as JSON with \\u escapes, as most clients send it (httpx's own encoder cannot write a lone
    surrogate)."""
    return post_raw(client, path, json.dumps(body).encode())


# --- what a fuzz once got wrong ----------------------------------------------------------------------------------

SURROGATE = "\ud800"
REFUSED = {
    # a lone UTF-16 surrogate: was a 500 (TypeError / UnicodeEncodeError deep in the tokenizer)
    "surrogate input": ("/v1/embeddings", {"input": SURROGATE}, "input", "lone UTF-16 surrogate"),
    "surrogate in a list": ("/v1/embeddings", {"input": ["ok", "a" + SURROGATE]}, "input[1]", "surrogate"),
    "surrogate instruction": ("/v1/embeddings", {"input": "a", "instruction": SURROGATE}, "instruction", "surrogate"),
    "surrogate question": ("/v1/rag", {"question": SURROGATE}, "question", "surrogate"),
    "surrogate stop": ("/v1/chat/completions", {"messages": USER, "stop": [SURROGATE]}, "stop[0]", "surrogate"),
    "surrogate content": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": SURROGATE}]},
        "messages[0].content",
        "surrogate",
    ),  # fmt: skip
    # seeds torch cannot take: were a 500 (ValueError)
    "seed 2**64": ("/v1/chat/completions", {"messages": USER, "seed": 2**64}, "seed", "less than or equal"),
    "seed 10**30": ("/v1/completions", {"prompt": "a", "seed": 10**30}, "seed", "less than or equal"),
    "rag seed": ("/v1/rag", {"question": "q", "seed": -(2**64)}, "seed", "greater than or equal"),
    # long stop strings: were 12.9 s under the model lock and +1.5 GB
    "long stops": ("/v1/chat/completions", {"messages": USER, "stop": ["x" * 1000] * 4}, "stop", "at most 64"),
    "rag stops": ("/v1/rag", {"question": "q", "stop": ["x"] * 20}, "stop", "at most 4 stop"),
    # what grit cannot honour: were silently accepted (a 200 that ignored them)
    "top_logprobs": ("/v1/chat/completions", {"messages": USER, "top_logprobs": 3}, None, "top_logprobs"),
    "tools": ("/v1/chat/completions", {"messages": USER, "tools": [{"type": "function"}]}, None, "tools"),
    "tool_choice required": (
        "/v1/chat/completions",
        {"messages": USER, "tool_choice": "required"},
        None,
        "tool_choice",
    ),  # fmt: skip
    "functions": ("/v1/chat/completions", {"messages": USER, "functions": [{"name": "f"}]}, None, "functions"),
    "json schema": (
        "/v1/chat/completions",
        {"messages": USER, "response_format": {"type": "json_schema"}},
        None,
        "response_format 'json_schema'",
    ),  # fmt: skip
    "json object": (
        "/v1/chat/completions",
        {"messages": USER, "response_format": {"type": "json_object"}},
        None,
        "plain text",
    ),  # fmt: skip
    "logit_bias": ("/v1/chat/completions", {"messages": USER, "logit_bias": {"50": 10}}, None, "logit_bias"),
    "completion logit_bias": ("/v1/completions", {"prompt": "a", "logit_bias": {"5": 1}}, None, "logit_bias"),
    "best_of": ("/v1/completions", {"prompt": "a", "best_of": 3}, None, "best_of"),
    "audio": ("/v1/chat/completions", {"messages": USER, "modalities": ["text", "audio"]}, None, "modalities"),
    "unknown field": ("/v1/chat/completions", {"messages": USER, "temprature": 0.5}, "temprature", "unknown field"),
    "unknown embeddings field": ("/v1/embeddings", {"input": "a", "truncate": True}, "truncate", "unknown field"),
    "unknown rag field": ("/v1/rag", {"question": "q", "top_k": 3}, "top_k", "unknown field"),
    # a question too long for the context: was cut silently where chat refuses its prompt
    "long question": ("/v1/rag", {"question": "word " * 600, "max_tokens": 8}, "question", "the limit is 252"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_grit_cannot_take_or_honour_is_a_400_naming_it(hostile, case):
    path, body, param, says = REFUSED[case]
    error = assert_error_body(post(hostile[1], path, body), 400, "invalid_request_error")
    assert says in error["message"], error
    if param is not None:
        assert error["param"] == param or error["message"].startswith(param), error


NEUTRAL = {  # what clients send by default for the fields above: asking for nothing, so accepted
    "logprobs false": {"logprobs": False},
    "top_logprobs 0": {"top_logprobs": 0},
    "no tools": {"tools": [], "tool_choice": "none", "parallel_tool_calls": True},
    "text format": {"response_format": {"type": "text"}},
    "text modality": {"modalities": ["text"]},
    "not stored": {"store": False, "user": "u-1"},
    "empty logit_bias": {"logit_bias": {}},
    "a named message": {"messages": [{"role": "user", "content": "Say hello.", "name": "ann"}]},
}


@pytest.mark.parametrize("case", list(NEUTRAL))
def test_neutral_values_of_unsupported_fields_are_accepted(hostile, case):
    response = post(hostile[1], "/v1/chat/completions", {"messages": USER, "max_tokens": 2, **NEUTRAL[case]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\xef\xbb\xbf" + json.dumps({"input": "a"}).encode(), "byte order mark"),
        (b'{"input": NaN}', "NaN is not a JSON value"),
        (b'{"input": "a", "dimensions": Infinity}', "Infinity is not a JSON value"),
        (b'{"input": "\xed\xa0\x80"}', "not valid UTF-8"),  # a surrogate's raw bytes
        (b'{"input": "\\udc00"}', "lone UTF-16 surrogate (\\udc00)"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b'{"input": ', "not valid JSON"),
    ],
)
def test_a_body_that_is_not_strict_json_is_a_400(hostile, content, says):
    error = assert_error_body(post_raw(hostile[1], "/v1/embeddings", content), 400, "invalid_request_error")
    assert says in error["message"], error


def test_routes_answer_exactly_their_paths_and_methods(hostile):
    running, client = hostile
    assert httpx.head(f"{running.url}/health").status_code == 200
    assert_error_body(client.post("/v1/embeddings/", json={"input": "a"}), 404)  # no 307 to follow with a body
    assert httpx.get(f"{running.url}/openapi.json").status_code == 401  # behind the key, as /v1 is
    assert "/v1/embeddings" in client.get("/openapi.json").json()["paths"]


def test_every_answer_carries_a_request_id(hostile):
    ok, bad = hostile[1].get("/v1/models"), hostile[1].post("/v1/embeddings", json={"input": ""})
    ids = {ok.headers["x-request-id"], bad.headers["x-request-id"]}
    assert len(ids) == 2 and all(len(i) == 16 for i in ids)


# --- generated: every field of every route, set to hostile values -------------------------------------------------

VALUES = {
    "null": None, "true": True, "negative": -1, "zero": 0, "2**64": 2**64, "1e308": 1e308, "half": 0.5,
    "empty string": "", "blank": "   ", "surrogate": SURROGATE, "huge string": "word " * 4000,
    "empty list": [], "list of null": [None], "nested ints": [[1, 2]], "empty object": {}, "object": {"a": 1},
    "list of surrogates": [SURROGATE], "negative ids": [-5], "ids past the vocabulary": [10**9],
    "deep list": [[[[[[[[["x"]]]]]]]]], "many strings": ["a"] * 40,
}  # fmt: skip
FIELDS = {
    "/v1/embeddings": ["input", "model", "encoding_format", "dimensions", "user", "instruction"],
    "/v1/chat/completions": [
        "messages",
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "seed",
        "n",
        "logprobs",
        "tools",
        "response_format",
        "stream_options",
    ],  # fmt: skip
    "/v1/completions": ["prompt", "max_tokens", "stop", "best_of", "echo", "suffix", "temperature"],
    "/v1/rag": ["question", "k", "cache", "max_tokens", "temperature", "stop", "seed", "stream"],
}
CASES = [(path, field, name) for path, fields in FIELDS.items() for field in [*fields, "not_a_field"]
         for name in VALUES]  # fmt: skip


def test_the_fuzz_table_is_large():
    assert len(CASES) >= 200


@pytest.mark.parametrize(("path", "field", "value"), CASES, ids=[f"{p[4:]}-{f}-{v}" for p, f, v in CASES])
def test_no_hostile_request_gets_a_5xx(hostile, path, field, value):
    body = {**ROUTES[path], field: VALUES[value]}
    response = post(hostile[1], path, body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_error_body(response, response.status_code)
    elif body.get("stream") is True:
        assert response.text.rstrip().endswith("data: [DONE]")


def test_the_server_still_answers_after_the_fuzz(hostile):
    running, client = hostile
    assert client.post("/v1/embeddings", json={"input": "still here"}).status_code == 200
    assert client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code == 200
    assert running.server.admission.inside == 0
