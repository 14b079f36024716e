"""The HTTP application: OpenAI-compatible routes over one ``GritModel`` (and, optionally, a RAG index).

Routes: ``GET /health``, ``GET /metrics``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/embeddings``,
``POST /v1/chat/completions``, ``POST /v1/completions``, and with an index ``POST /v1/rag``. Streaming responses are
server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``. The routes are thin: the service
(``grit.serve.service``) does the work, ``grit.serve.wire`` shapes the replies.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from grit.decode_step import step_for
from grit.decoding import ContinuousDecoder
from grit.model import GritModel
from grit.serve.bodies import StrictJSONRoute
from grit.serve.config import ServeConfig
from grit.serve.errors import APIError, install_error_handlers
from grit.serve.metrics import Metrics
from grit.serve.middleware import BodyLimit, RequestLog
from grit.serve.scheduler import Admission, EmbeddingBatcher, FairGate, ModelThread
from grit.serve.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, RagRequest
from grit.serve.service import (
    Server,
    check_model,
    completion_prompts,
    embed_route,
    generate_route,
    rag_answer_route,
)
from grit.serve.wire import model_card

__all__ = ["Server", "create_app"]

log = logging.getLogger("grit.serve")


def create_app(model: GritModel, config: ServeConfig | None = None, rag=None,
               model_thread: ModelThread | None = None) -> FastAPI:  # fmt: skip
    """The FastAPI app serving ``model``; ``rag`` (a ``grit.rag.RAG`` over the same model) adds ``/v1/rag``.
    Forward passes run on ``model_thread`` (a new one when not given; best the one the model was loaded on, so that
    one thread in the process runs torch's parallel work: ``grit.serve.scheduler``'s module doc says why)."""
    config = config or ServeConfig()
    model_thread = model_thread or ModelThread()
    gate = decoding_gate(model, config, model_thread)
    server = Server(
        model=model,
        config=config,
        name=config.model_name or model.identity.name,
        gate=gate,
        batcher=EmbeddingBatcher(
            model, gate, config.max_batch_texts, config.embed_batch_size, config.batch_wait_ms / 1000
        ),
        admission=Admission(config.max_pending, config.admission_wait_s),
        rag=rag,
        created=int(time.time()),
        workers=ThreadPoolExecutor(config.max_pending, thread_name_prefix="grit-generate"),
    )

    metrics = Metrics(server) if config.metrics else None
    if metrics is not None:
        server.batcher.on_batch = metrics.embed_batch.observe
        if isinstance(gate, ContinuousDecoder):
            gate.on_step, gate.on_first_token = metrics.decode_batch.observe, metrics.first_token.observe

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.batcher.close()
        if isinstance(gate, ContinuousDecoder):
            gate.close()
        server.workers.shutdown(wait=False, cancel_futures=True)
        model_thread.close()

    # No redirect from "/v1/embeddings/" to "/v1/embeddings" (a 307 a client would follow with its body); the schema
    # is served below, behind the key like every /v1 route; every POST body is strict JSON (grit.serve.bodies).
    app = FastAPI(title="grit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)  # fmt: skip
    app.router.route_class = StrictJSONRoute
    app.state.server = server
    install_error_handlers(app, config.retry_after_s)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(RequestLog, write=config.log_requests, observe=metrics.request_done if metrics else None)
    authorized = [Depends(api_key_check(config.api_key))]

    def card() -> dict:
        return model_card(server.name, server.created, server.model, server.rag is not None)

    @app.get("/health")
    @app.head("/health", include_in_schema=False)
    async def health() -> dict:
        return {"status": "ok", "model": server.name, "requests_in_progress": server.admission.inside}

    @app.get("/openapi.json", dependencies=authorized, include_in_schema=False)
    async def openapi() -> dict:
        return app.openapi()

    if metrics is not None:

        @app.get("/metrics", dependencies=authorized, include_in_schema=False)
        async def prometheus() -> Response:
            data, content_type = metrics.render()
            return Response(data, media_type=content_type)

    @app.get("/v1/models", dependencies=authorized)
    async def models() -> dict:
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=authorized)
    async def one_model(model_id: str) -> dict:
        check_model(server, model_id)
        return card()

    @app.post("/v1/embeddings", dependencies=authorized)
    async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
        return await embed_route(server, body, request)

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat(body: ChatRequest, request: Request):
        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()}
                    for m in body.messages]  # fmt: skip
        return await generate_route(server, body, request, [messages], raw=False)

    @app.post("/v1/completions", dependencies=authorized)
    async def completions(body: CompletionRequest, request: Request):
        return await generate_route(server, body, request, completion_prompts(server, body), raw=True)

    if rag is not None:

        @app.post("/v1/rag", dependencies=authorized)
        async def rag_route(body: RagRequest, request: Request):
            return await rag_answer_route(server, body, request)

    return app


def decoding_gate(model: GritModel, config: ServeConfig, model_thread: ModelThread) -> FairGate | ContinuousDecoder:
    """The model's gate: a continuous-batching decoder where the model allows one, else a plain fair lock (chats
    then advance in turn, one token each)."""
    gate = FairGate(model_thread)
    if config.max_decode_batch == 1:
        return gate
    step_for(model.lm, config.decode_step)  # a step the model cannot take is refused, not left for in-turn decoding
    try:
        return ContinuousDecoder(
            model.lm, model.tokenizer, gate, config.max_decode_batch, config.decode_threads or None, config.decode_step
        )
    except ValueError as e:  # the model cannot be batched (grit.decoding.unsupported says why)
        log.info("generations are decoded one at a time, in turn: %s", e)
        return gate


def api_key_check(api_key: str | None) -> Callable:
    # Digests first: compare_digest is constant-time only for equal lengths, and hashing makes them equal.
    expected = hashlib.sha256(api_key.encode()).digest() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           type="authentication_error", code="invalid_api_key")  # fmt: skip

    return check
