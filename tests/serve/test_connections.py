"""Connections are bounded: a request must arrive whole within ``request_timeout_s`` or its connection is closed,
an ambiguous request is refused, and real clients are served beside idle sockets."""

from __future__ import annotations

import socket

import pytest

from grit.serve.app import create_app
from grit.serve.config import ServeConfig

from .serveutil import MODEL, httpx, serve, wait_until

TIMEOUT = 0.5  # the server's deadline here; the tests wait up to SAFETY for what must come well before it
SAFETY = 20
HEADERS = b"POST /v1/embeddings HTTP/1.1\r\nHost: grit\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def strict_server(tiny_grit):
    config = ServeConfig(model_name=MODEL, request_timeout_s=TIMEOUT, keep_alive_s=1, log_requests=False)
    with serve(create_app(tiny_grit, config)) as running:
        yield running


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(SAFETY)  # a hang fails the test instead of blocking it
    return sock


def closed_by_server(sock: socket.socket) -> bytes:
    """What the server sent before it closed the connection (b"" for nothing); raises if it never closes."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # a socket that stays silent
        b"POST /v1/embeddings HTTP/1.1\r\nHost: grit\r\n",  # half the headers
        HEADERS + b"Content-Length: 100\r\n\r\n" + b'{"input": ',  # a body shorter than its Content-Length
    ],
    ids=["silent", "half headers", "short body"],
)
def test_a_request_that_does_not_arrive_whole_is_closed(strict_server, sent):
    with connect(strict_server.url) as sock:
        sock.sendall(sent)
        assert closed_by_server(sock) == b""
    wait_until(lambda: strict_server.server.admission.inside == 0, SAFETY, "the cut request to leave")


def test_content_length_with_transfer_encoding_is_refused(strict_server):
    body = b'{"input": "a"}'
    request = HEADERS + b"Content-Length: 14\r\nTransfer-Encoding: chunked\r\n\r\ne\r\n" + body + b"\r\n0\r\n\r\n"
    with connect(strict_server.url) as sock:
        sock.sendall(request)
        assert closed_by_server(sock).startswith(b"HTTP/1.1 400 ")


def test_real_clients_are_served_beside_idle_sockets(strict_server):
    idle = [connect(strict_server.url) for _ in range(8)]
    try:
        with httpx.Client(base_url=strict_server.url, timeout=SAFETY) as client:
            for i in range(4):  # one kept-alive connection: each request re-arms and clears the deadline
                response = client.post("/v1/embeddings", json={"input": f"text {i}"})
                assert response.status_code == 200 and len(response.json()["data"]) == 1
        for sock in idle:
            assert closed_by_server(sock) == b""
    finally:
        for sock in idle:
            sock.close()


def test_a_long_generation_is_not_cut_by_the_request_deadline(strict_server, tiny_grit):
    """The deadline covers the request arriving, not the answer: a stream longer than it ends normally."""
    body = {"messages": [{"role": "user", "content": "Tell a story."}], "max_tokens": 48, "stream": True,
            "temperature": 0}  # fmt: skip
    decoder = strict_server.server.gate  # a ContinuousDecoder: one step per token
    steps = decoder.steps
    with httpx.Client(base_url=strict_server.url, timeout=SAFETY) as client:
        text = client.post("/v1/chat/completions", json=body).text
    tokens = range(decoder.steps - steps)
    assert text.rstrip().endswith("data: [DONE]") and len(tokens) >= 2
