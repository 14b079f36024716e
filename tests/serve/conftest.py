"""Server fixtures: one live server (with an API key and small limits) shared by the whole session."""

from __future__ import annotations

import pytest
from openai import OpenAI

from grit.serve.app import create_app
from grit.serve.config import ServeConfig

from .serveutil import API_KEY, MODEL, httpx, serve

# Small limits, so each can be crossed with a small request.
MAX_INPUT_TOKENS = 48
MAX_TOKENS_CAP = 64
MAX_BODY_BYTES = 50_000
MAX_INPUTS = 16
MAX_PROMPTS = 4


@pytest.fixture(scope="session")
def live(tiny_grit):
    config = ServeConfig(
        model_name=MODEL,
        api_key=API_KEY,
        max_input_tokens=MAX_INPUT_TOKENS,
        max_tokens_cap=MAX_TOKENS_CAP,
        max_body_bytes=MAX_BODY_BYTES,
        max_inputs=MAX_INPUTS,
        max_prompts=MAX_PROMPTS,
    )
    with serve(create_app(tiny_grit, config)) as running:
        yield running


@pytest.fixture(scope="session")
def client(live):
    with OpenAI(base_url=f"{live.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def http(live):
    """Raw requests, with the API key."""
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c
