"""Running a real uvicorn server in a background thread, and small helpers the server tests share."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import uvicorn

try:  # raw requests in the tests use this module
    import httpx  # noqa: F401
except ImportError:  # openai 3 depends on httpx's successor, httpx2 (the same API)
    import httpx2 as httpx  # noqa: F401

from grit.serve.app import Server
from grit.serve.connections import uvicorn_config

API_KEY = "sk-grit-test"
MODEL = "tiny-grit"


@dataclass
class Live:
    """A server that runs: its address and what its routes share (gate, batcher, admission)."""

    url: str
    app: object

    @property
    def server(self) -> Server:
        return self.app.state.server


@contextmanager
def serve(app) -> Iterator[Live]:
    """Run ``app`` under uvicorn on a free loopback port until the block ends."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = app.state.server.config  # the connection settings grit serve runs with
    server = uvicorn.Server(uvicorn_config(app, config, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 30, "the server to start")
    assert server.started, "uvicorn did not start"
    try:
        yield Live(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def row_cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def vectors(response) -> np.ndarray:
    """The embeddings of an openai ``CreateEmbeddingResponse``, in input order."""
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)])


def sse_data(lines: Iterator[str]) -> Iterator:
    """The ``data:`` payloads of a server-sent event stream, as they arrive: parsed JSON, or ``"[DONE]"``."""
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            yield payload if payload == "[DONE]" else json.loads(payload)


def assert_error_body(response, status: int, type: str | None = None) -> dict:
    """The response has ``status`` and an OpenAI error body; returns its ``error`` object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if type is not None:
        assert error["type"] == type
    return error
