"""The server under bad input, overload, queued work and clients that leave: every failure is an OpenAI error body
with the right status, queued embeddings share a batch, and a disconnect stops generation."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai import OpenAI
from transformers import TextIteratorStreamer

from grit import generation
from grit.decoding import ContinuousDecoder
from grit.serve.app import create_app
from grit.serve.config import ServeConfig

from .conftest import MAX_BODY_BYTES, MAX_INPUT_TOKENS, MAX_INPUTS, MAX_PROMPTS, MAX_TOKENS_CAP
from .serveutil import API_KEY, MODEL, assert_error_body, httpx, row_cosines, serve, sse_data, vectors, wait_until

USER = [{"role": "user", "content": "Hello there"}]

# --- bad requests ----------------------------------------------------------------------------------------------

BAD_REQUESTS = {
    "empty input string": ("/v1/embeddings", {"input": ""}, "empty"),
    "blank input string": ("/v1/embeddings", {"input": ["ok", "   "]}, "input[1] is empty"),
    "empty input list": ("/v1/embeddings", {"input": []}, "empty"),
    "float token ids": ("/v1/embeddings", {"input": [1.5]}, "input"),
    "object input": ("/v1/embeddings", {"input": {"a": 1}}, "input"),
    "missing input": ("/v1/embeddings", {"model": MODEL}, "'input' is required"),
    "input over the token limit": ("/v1/embeddings", {"input": "word " * 200}, f"the limit is {MAX_INPUT_TOKENS}"),
    "too many inputs": ("/v1/embeddings", {"input": ["a"] * (MAX_INPUTS + 1)}, f"at most {MAX_INPUTS}"),
    "dimensions over the model's": ("/v1/embeddings", {"input": "a", "dimensions": 65}, "dimensions"),
    "zero dimensions": ("/v1/embeddings", {"input": "a", "dimensions": 0}, "dimensions"),
    "unknown encoding": ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, "encoding_format"),
    "missing messages": ("/v1/chat/completions", {"model": MODEL}, "'messages' is required"),
    "no messages": ("/v1/chat/completions", {"messages": []}, "messages"),
    "unknown role": ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    "image content": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "only text content",
    ),
    "max_tokens over the cap": (
        "/v1/chat/completions",
        {"messages": USER, "max_tokens": MAX_TOKENS_CAP + 1},
        f"cap of {MAX_TOKENS_CAP}",
    ),
    "chat prompt over the context": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "word " * 600}]},
        "context",
    ),
    "max_tokens zero": ("/v1/chat/completions", {"messages": USER, "max_tokens": 0}, "max_tokens"),
    "n=2": ("/v1/chat/completions", {"messages": USER, "n": 2}, "n must be 1"),
    "five stop strings": ("/v1/chat/completions", {"messages": USER, "stop": list("abcde")}, "at most 4 stop"),
    "temperature 3": ("/v1/chat/completions", {"messages": USER, "temperature": 3}, "temperature"),
    "logprobs": ("/v1/chat/completions", {"messages": USER, "logprobs": True}, "logprobs"),
    "tools": ("/v1/chat/completions", {"messages": USER, "tools": [{"type": "function"}]}, "tools"),
    "two prompts streamed": ("/v1/completions", {"prompt": ["a", "b"], "stream": True}, "stream=true takes one"),
    "too many prompts": ("/v1/completions", {"prompt": ["a"] * (MAX_PROMPTS + 1)}, f"at most {MAX_PROMPTS}"),
    "no prompts": ("/v1/completions", {"prompt": []}, "empty list"),
    "empty prompt": ("/v1/completions", {"prompt": ""}, "prompt is empty"),
    "second prompt empty": ("/v1/completions", {"prompt": ["a", ""]}, "prompt[1]: prompt is empty"),
    "second prompt over the context": (
        "/v1/completions",
        {"prompt": ["a", "word " * 600], "max_tokens": 4},
        "prompt[1]: prompt is 1801 tokens",
    ),
    "echo": ("/v1/completions", {"prompt": "a", "echo": True}, "echo"),
    "completion max_tokens over the cap": (
        "/v1/completions",
        {"prompt": "a", "max_tokens": MAX_TOKENS_CAP + 1},
        f"cap of {MAX_TOKENS_CAP}",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_400_with_an_openai_error_body(http, case):
    path, body, says = BAD_REQUESTS[case]
    error = assert_error_body(http.post(path, json=body), 400, "invalid_request_error")
    assert says in error["message"]
    assert set(error) >= {"message", "type", "param", "code"}


@pytest.mark.parametrize("bad_id", [-1, 10_000])
def test_token_ids_outside_the_vocabulary_are_400(http, bad_id):
    for given in ([5, bad_id], [[5], [6, bad_id]]):
        response = http.post("/v1/embeddings", json={"input": given})
        error = assert_error_body(response, 400, "invalid_request_error")
        assert f"token id {bad_id} is outside" in error["message"] and error["param"] == "input"
    for given in ([5, bad_id], [[5], [6, bad_id]]):
        response = http.post("/v1/completions", json={"prompt": given, "max_tokens": 2})
        error = assert_error_body(response, 400, "invalid_request_error")
        assert f"token id {bad_id} is outside" in error["message"] and error["param"] == "prompt"


def test_empty_input_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="")
    assert e.value.status_code == 400 and e.value.type == "invalid_request_error" and e.value.param == "input"


def test_empty_input_list_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.embeddings.create(model=MODEL, input=[])


def test_non_integer_token_ids_raise_bad_request_error(client):
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=[1.5])


def test_over_long_input_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError, match=f"limit is {MAX_INPUT_TOKENS}"):
        client.embeddings.create(model=MODEL, input="word " * 200)


def test_max_tokens_over_the_cap_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError, match="cap") as e:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=MAX_TOKENS_CAP + 1)
    assert e.value.param == "max_tokens"


def test_n_2_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model=MODEL, messages=USER, n=2)


@pytest.mark.parametrize("route", ["embeddings", "chat", "completions", "retrieve"])
def test_unknown_model_is_404(client, route):
    calls = {
        "embeddings": lambda: client.embeddings.create(model="gpt-4o", input="a"),
        "chat": lambda: client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=2),
        "completions": lambda: client.completions.create(model="gpt-4o", prompt="a", max_tokens=2),
        "retrieve": lambda: client.models.retrieve("gpt-4o"),
    }
    with pytest.raises(openai.NotFoundError, match="gpt-4o") as e:
        calls[route]()
    assert e.value.status_code == 404 and e.value.type == "not_found_error"


def test_unknown_route_is_404_with_an_error_body(http):
    assert_error_body(http.post("/v1/images/generations", json={}), 404, "not_found_error")


def test_invalid_json_is_400(http):
    response = http.post("/v1/embeddings", content=b'{"input": ', headers={"Content-Type": "application/json"})
    assert "not valid JSON" in assert_error_body(response, 400, "invalid_request_error")["message"]


def test_wrong_api_key_raises_authentication_error(live):
    with OpenAI(base_url=f"{live.url}/v1", api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.embeddings.create(model=MODEL, input="a")
    assert e.value.status_code == 401 and e.value.type == "authentication_error"


def test_missing_api_key_is_401(live):
    for path, body in [("/v1/embeddings", {"input": "a"}), ("/v1/chat/completions", {"messages": USER})]:
        assert_error_body(httpx.post(live.url + path, json=body), 401, "authentication_error")
    assert_error_body(httpx.get(f"{live.url}/v1/models"), 401, "authentication_error")
    other_scheme = {"Authorization": f"Basic {API_KEY}"}
    assert_error_body(httpx.get(f"{live.url}/v1/models", headers=other_scheme), 401, "authentication_error")


def test_body_over_the_limit_is_413(http, client):
    big = "x" * (MAX_BODY_BYTES + 1)
    assert_error_body(http.post("/v1/embeddings", json={"input": big}), 413, "invalid_request_error")
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(model=MODEL, input=big)
    assert e.value.status_code == 413


def test_chunked_body_over_the_limit_is_413(http):
    """A body without Content-Length (chunked transfer encoding) is held to the same limit."""
    chunks = (b'{"input": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}' for _ in range(1))
    response = http.post("/v1/embeddings", content=chunks, headers={"Content-Type": "application/json"})
    assert_error_body(response, 413, "invalid_request_error")


def test_chunked_body_under_the_limit_is_served(http):
    chunks = iter([b'{"input": ', b'"chunked"}'])
    response = http.post("/v1/embeddings", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and len(response.json()["data"]) == 1


def test_server_still_answers_after_bad_requests(live, client):
    assert len(client.embeddings.create(model=MODEL, input="still here").data) == 1
    assert client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).usage.completion_tokens >= 1
    assert live.server.admission.inside == 0  # no refused request kept a place


# --- overload --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def narrow(tiny_grit):
    """A server that admits one request at a time."""
    config = ServeConfig(model_name=MODEL, max_pending=1, retry_after_s=3, admission_wait_s=0)
    with serve(create_app(tiny_grit, config)) as running:
        yield running


def test_overload_is_503_with_retry_after_then_recovers(narrow):
    server = narrow.server
    results: dict = {}
    with OpenAI(base_url=f"{narrow.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:

        def first() -> None:
            results["first"] = client.embeddings.create(model=MODEL, input="first in")

        with server.gate.hold():
            thread = threading.Thread(target=first)
            thread.start()
            wait_until(lambda: server.admission.inside == 1, 10, "the first request to be admitted")
            with pytest.raises(openai.APIStatusError) as e:
                client.embeddings.create(model=MODEL, input="one too many")
            assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "3"
            assert e.value.type == "overloaded_error"
            streamed = httpx.post(f"{narrow.url}/v1/chat/completions", json={"messages": USER, "stream": True})
            assert_error_body(streamed, 503, "overloaded_error")
            assert streamed.headers["retry-after"] == "3"
        thread.join(30)
        assert len(results["first"].data) == 1
        assert len(client.embeddings.create(model=MODEL, input="later").data) == 1
        assert client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).choices[0].message
    assert server.admission.inside == 0


def test_requests_over_the_limit_wait_in_line_and_enter_in_arrival_order(tiny_grit):
    """With max_pending=1 and a line, later requests wait (none refused) and are served first come, first served;
    one that waits longer than admission_wait_s gets the 503."""
    config = ServeConfig(model_name=MODEL, max_pending=1, admission_wait_s=60, log_requests=False)
    with serve(create_app(tiny_grit, config)) as running:
        server, submitted, statuses = running.server, [], {}
        real_submit = server.batcher.submit

        def submit(texts, *args):
            submitted.append(texts[0])
            return real_submit(texts, *args)

        server.batcher.submit = submit
        names = ["first", "second", "third", "fourth"]

        def embed(name: str) -> None:
            statuses[name] = httpx.post(f"{running.url}/v1/embeddings", json={"input": name}, timeout=60).status_code

        threads = []
        with server.gate.hold():
            for k, name in enumerate(names):
                threads.append(threading.Thread(target=embed, args=(name,)))
                threads[-1].start()
                if k == 0:
                    wait_until(lambda: server.admission.inside == 1, 20, "the first request to be admitted")
                else:
                    wait_until(lambda k=k: server.admission.waiting == k, 20, f"{k} requests in line")
        for t in threads:
            t.join(60)
        assert statuses == dict.fromkeys(names, 200) and submitted == names
        assert server.admission.inside == 0 and server.admission.waiting == 0

    config = ServeConfig(model_name=MODEL, max_pending=1, admission_wait_s=0.2, log_requests=False)
    with serve(create_app(tiny_grit, config)) as running:
        server = running.server
        with server.gate.hold():  # held until the second request's answer came: its wait must run out
            first = threading.Thread(target=lambda: httpx.post(f"{running.url}/v1/embeddings", json={"input": "a"},
                                                              timeout=60))  # fmt: skip
            first.start()
            wait_until(lambda: server.admission.inside == 1, 20, "the first request to be admitted")
            late = httpx.post(f"{running.url}/v1/embeddings", json={"input": "b"}, timeout=60)
            assert_error_body(late, 503, "overloaded_error")
            assert "waited 0.2 s" in late.json()["error"]["message"]
        first.join(60)


# --- batching --------------------------------------------------------------------------------------------------


def test_queued_embedding_requests_run_as_one_batch(live, client, tiny_grit):
    server = live.server
    texts = ["one", "two words", "a somewhat longer third text", "4", "the fifth of six texts here", "six!"]
    instruction = "Represent the text"
    results: list = [None] * len(texts)

    def embed(i: int) -> None:
        response = client.embeddings.create(model=MODEL, input=texts[i], extra_body={"instruction": instruction})
        results[i] = vectors(response)[0]

    before = server.batcher.batches
    threads = [threading.Thread(target=embed, args=(i,)) for i in range(len(texts))]
    with server.gate.hold():
        for t in threads:
            t.start()
        wait_until(
            lambda: server.admission.inside == len(texts) and server.gate.waiting == 1,
            10,
            "all requests to queue behind the held model",
        )
        wait_until(lambda: server.batcher._jobs.qsize() == len(texts) - 1, 5, "the jobs to be queued")
    for t in threads:
        t.join(30)
    assert server.batcher.batches == before + 1
    assert row_cosines(results, tiny_grit.encode(texts, instruction)).min() >= 0.9999


def test_different_instructions_queued_together_run_as_one_batch_each(live, client, tiny_grit):
    server = live.server
    jobs = [("alpha", "first instruction"), ("beta", "second instruction"), ("gamma", "first instruction")]
    results: list = [None] * len(jobs)

    def embed(i: int) -> None:
        text, instruction = jobs[i]
        results[i] = vectors(client.embeddings.create(model=MODEL, input=text,
                                                      extra_body={"instruction": instruction}))[0]  # fmt: skip

    before = server.batcher.batches
    threads = [threading.Thread(target=embed, args=(i,)) for i in range(len(jobs))]
    with server.gate.hold():
        for t in threads:
            t.start()
        wait_until(lambda: server.admission.inside == len(jobs) and server.gate.waiting == 1, 10, "queued requests")
        wait_until(lambda: server.batcher._jobs.qsize() == len(jobs) - 1, 5, "the jobs to be queued")
    for t in threads:
        t.join(30)
    assert server.batcher.batches == before + 2
    for (text, instruction), got in zip(jobs, results, strict=True):
        assert row_cosines([got], [tiny_grit.encode(text, instruction)]).min() >= 0.9999


# --- a client that leaves, and chats that fill the threads -------------------------------------------------------
#
# These tests decide who goes on when: generation waits inside ``gate.between_tokens`` (patched) until what the test
# checks has happened, and the assertions read the order of events and counts of tokens, never a clock.

LONG = [{"role": "user", "content": "Write a long story about the logging module."}]
DEFAULT_THREADS = 2  # the threads of the event loop's default executor (``asyncio.to_thread``) in ``observed``


class Observed:
    """``app`` as uvicorn runs it, seen from outside: on an event loop whose default executor is ``default_executor``
    (set at startup), and noting when a client is gone (the app received ``http.disconnect``)."""

    def __init__(self, app, default_executor: ThreadPoolExecutor) -> None:
        self.app, self.state = app, app.state  # ``state``: what ``Live.server`` reads
        self.default_executor = default_executor
        self.disconnected = threading.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            asyncio.get_running_loop().set_default_executor(self.default_executor)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def watched_receive():
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
            return message

        await self.app(scope, watched_receive, send)


@pytest.fixture(scope="module", params=[32, 1], ids=["batched", "in-turn"])
def observed(tiny_grit, request):
    """The server with continuous batching (generations share each decoding step), and without (they advance in
    turn, one token each)."""
    executor = ThreadPoolExecutor(DEFAULT_THREADS, thread_name_prefix="test-default")
    config = ServeConfig(model_name=MODEL, max_decode_batch=request.param)
    with serve(Observed(create_app(tiny_grit, config), executor)) as running:
        assert isinstance(running.server.gate, ContinuousDecoder) == (request.param > 1)
        yield running


def before_each_token(server, monkeypatch, hook: Callable[[], bool | None]) -> None:
    """Call ``hook`` before generation makes its next token: before each step of the decoder (one token for every
    generation in the batch), or, in turn, after each generation's token. ``hook`` returning False skips that step
    (the decoder comes back to it after giving the model to whoever waits)."""
    gate = server.gate
    if isinstance(gate, ContinuousDecoder):
        step = gate._step

        def stepped() -> None:
            if hook() is not False:
                step()

        monkeypatch.setattr(gate, "_step", stepped)
    else:
        original = gate.between_tokens

        def between_tokens() -> None:
            hook()
            original()

        monkeypatch.setattr(gate, "between_tokens", between_tokens)


@pytest.fixture
def observed_client(observed):
    with OpenAI(base_url=f"{observed.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


class CountingStreamer(TextIteratorStreamer):
    """The streamer of ``stream_text``, counting what generation puts in its queue and what the stream asks for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queued = 0  # items generation put in the queue (one per token, and the end)
        self.asked = 0  # items the stream asked for: more than ``queued`` while it waits for the next one
        self.new_text = False  # text put since generation last offered the model (cleared by the test's hook)
        self.ended = threading.Event()  # generation is over
        self.on_text: Callable[[], None] | None = None  # called in generation's thread as each token's text is put

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.queued += 1 + stream_end
        self.new_text = self.new_text or bool(text)
        if text and not stream_end and self.on_text is not None:
            self.on_text()
        super().on_finalized_text(text, stream_end)
        if stream_end:
            self.ended.set()

    def __next__(self) -> str:
        self.asked += 1
        return super().__next__()


def hold_until(condition: Callable[[], bool], what: str, timeouts: list[str]) -> None:
    """In a generation thread: wait for ``condition``. A timeout is recorded for the test to fail on (and the
    generation goes on, so a broken server fails the test instead of hanging it)."""
    try:
        wait_until(condition, 30, what)
    except AssertionError as e:
        timeouts.append(str(e))


def test_client_disconnect_stops_a_streamed_generation(observed, observed_client, monkeypatch):
    """Generation waits at the token after its first text until the server has seen the client go; from then on it
    makes each token only once the stream has asked for more, so the count of tokens after the disconnect is what
    the server asked for, not how far generation got while the server was busy."""
    server, client, app = observed.server, observed_client, observed.app
    calls = [0]  # generation's tokens (calls to the hook before each)
    streamers: list[CountingStreamer] = []
    cancels: list[threading.Event] = []
    marks: dict[str, int] = {}  # the token after the first text, and after the first text sent after the disconnect
    timeouts: list[str] = []

    def watched_between_tokens() -> None:
        calls[0] += 1
        if streamers:
            streamer, cancel = streamers[-1], cancels[-1]
            if streamer.new_text:  # the last token's text is in the queue, on its way to the client
                streamer.new_text = False
                if "first" not in marks:
                    marks["first"] = calls[0]
                    hold_until(app.disconnected.is_set, "the server to see the client go", timeouts)
            if app.disconnected.is_set():  # one token at a time: until cancelled, only when the stream asks for more
                hold_until(lambda: cancel.is_set() or streamer.asked > streamer.queued,
                           "the stream to be cancelled or to ask for more", timeouts)  # fmt: skip

    def text_put() -> None:
        # Noted as the text is put, not at the next token: the server can cancel as soon as this text reaches the
        # closed connection, and a generation cancelled within this token's step never comes back to the hook.
        if "first" in marks:
            marks.setdefault("after disconnect", calls[0] + 1)

    def streamer(*args, **kwargs) -> CountingStreamer:
        streamers.append(CountingStreamer(*args, **kwargs))
        streamers[-1].on_text = text_put
        return streamers[-1]

    real_stream_text = generation.stream_text

    def stream_text(*args, **kwargs):
        cancels.append(inspect.signature(real_stream_text).bind(*args, **kwargs).arguments["cancel"])
        return real_stream_text(*args, **kwargs)

    before_each_token(server, monkeypatch, watched_between_tokens)
    monkeypatch.setattr(generation, "TextIteratorStreamer", streamer)
    monkeypatch.setattr(generation, "stream_text", stream_text)
    whole = client.chat.completions.create(model=MODEL, messages=LONG, temperature=0, max_tokens=64)
    assert whole.usage.completion_tokens == 64 and calls[0] >= 63  # uninterrupted, this prompt runs 64 tokens

    calls[0] = 0
    app.disconnected.clear()
    body = {"model": MODEL, "messages": LONG, "temperature": 0, "max_tokens": 64, "stream": True}
    gc.disable()  # the place must be given back by the stream's own cleanup, not by a collected response
    try:
        with httpx.Client(base_url=observed.url, timeout=60) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                for event in sse_data(response.iter_lines()):
                    if event != "[DONE]" and event["choices"] and event["choices"][0]["delta"].get("content"):
                        break
                else:
                    raise AssertionError("the stream ended before any content")
        wait_until(lambda: streamers[-1].ended.is_set() and server.admission.inside == 0, 30,
                   "the abandoned stream's generation to end and leave the server")  # fmt: skip
    finally:
        gc.enable()
    assert not timeouts, timeouts
    # The first text sent after the disconnect showed the server that the client was gone: generation ends at that
    # token or the next (the one under way when it was cancelled), far short of the 64 it would run.
    assert set(marks) == {"first", "after disconnect"}, marks
    assert calls[0] <= marks["after disconnect"] + 1 < 64, f"{calls[0]} tokens; {marks}"
    assert len(client.embeddings.create(model=MODEL, input="after the disconnect").data) == 1


def test_an_embedding_is_not_stuck_behind_more_chats_than_worker_threads(observed, observed_client, monkeypatch):
    """Non-streamed chats each keep a thread busy for their whole generation; with more of them than the event loop's
    default executor has threads (there an embedding request counts its tokens), an embedding request must still go
    first, after about one token of each chat (in turn) or one step of all (batched), not wait for a chat to end.

    Until the embedding is answered, a chat makes its next token only while every other user of the model (the other
    chats, and the embedding batch once it is queued) waits in line behind it: no chat can end first by being fast.
    Batched, no step runs until every chat is in the batch, and then each waits for the embedding to be in line."""
    server, client = observed.server, observed_client
    gate = server.gate
    batched = isinstance(gate, ContinuousDecoder)
    chats = DEFAULT_THREADS + 1
    assert server.config.max_pending > chats  # all are admitted, the embedding too, and each chat has a worker
    events: list[str] = []  # in order: "token", "embedding queued", "embedding computed", "... answered"
    answered, held = threading.Event(), threading.Event()
    timeouts: list[str] = []

    def in_turn() -> None:
        events.append("token")
        if not answered.is_set() and gate.waiting < chats:
            held.set()
            hold_until(lambda: answered.is_set() or gate.waiting >= chats, "all in line", timeouts)

    def one_step() -> bool:
        if answered.is_set():
            return True
        if gate.active < chats:
            return False  # no token yet: every chat joins first
        held.set()
        if "embedding computed" in events:
            hold_until(answered.is_set, "the embedding to be answered", timeouts)
        else:
            hold_until(lambda: answered.is_set() or ("embedding queued" in events and gate.waiting >= 1),
                       "the embedding batch in line", timeouts)  # fmt: skip
        events.append("token")
        return True

    real_submit = server.batcher.submit

    def submit(*args, **kwargs):
        events.append("embedding queued")
        future = real_submit(*args, **kwargs)
        future.add_done_callback(lambda _: events.append("embedding computed"))
        return future

    before_each_token(server, monkeypatch, one_step if batched else in_turn)
    monkeypatch.setattr(server.batcher, "submit", submit)

    def chat() -> None:
        client.chat.completions.create(model=MODEL, messages=LONG, temperature=0, max_tokens=10)
        events.append("chat answered")

    threads = [threading.Thread(target=chat) for _ in range(chats)]
    for t in threads:
        t.start()
    try:
        # One chat holds the model, the others wait for it: every chat has a thread, and they are all in use.
        in_line = (lambda: gate.active == chats) if batched else (lambda: gate.waiting == chats - 1)
        wait_until(lambda: held.is_set() and in_line(), 20, "every chat to be generating")
        client.with_options(timeout=30).embeddings.create(model=MODEL, input="me first")
        events.append("embedding answered")
    finally:
        answered.set()
        for t in threads:
            t.join(60)
    assert not timeouts, timeouts
    assert events.count("chat answered") == chats
    assert events.index("embedding answered") < events.index("chat answered"), events
    queued, computed = events.index("embedding queued"), events.index("embedding computed")
    waited = events[queued:computed].count("token")
    limit = 1 if batched else chats
    assert waited <= limit, f"the embedding waited for {waited} tokens ({'steps' if batched else chats} chats)"
