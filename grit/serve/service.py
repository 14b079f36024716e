"""The service behind the routes: a validated request becomes calls on the model's facade (``GritModel``), under
the server's admission, model gate and limits; the reply is built with ``grit.serve.wire``. How requests share the
model is in ``grit.serve.scheduler``."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from grit.decoding import ContinuousDecoder
from grit.generation import SamplingParams, Stream
from grit.model import GritModel, truncate
from grit.serve.config import ServeConfig
from grit.serve.errors import APIError, bad_request
from grit.serve.scheduler import Admission, EmbeddingBatcher, FairGate
from grit.serve.schemas import CompletionRequest, EmbeddingRequest, RagRequest, Sampling
from grit.serve.wire import Reply, encode_vector, hit_dict, sse

log = logging.getLogger("grit.serve")


@dataclass
class Server:
    """What the routes share."""

    model: GritModel
    config: ServeConfig
    name: str
    gate: FairGate | ContinuousDecoder  # the model's lock; the decoder batches generations too
    batcher: EmbeddingBatcher
    admission: Admission
    rag: object | None = None  # grit.rag.RAG
    created: int = 0
    workers: ThreadPoolExecutor | None = None  # whole generations run here (see ``in_worker``)

    @property
    def max_input_tokens(self) -> int:
        return self.config.max_input_tokens or self.model.context_length


def check_model(server: Server, name: str | None) -> None:
    """A request may name the served model or none; any other name is a 404, as OpenAI answers."""
    if name and name != server.name:
        raise APIError(404, f"model {name!r} is not served here; this server serves {server.name!r}",
                       type="not_found_error", param="model", code="model_not_found")  # fmt: skip


def note(request: Request, **fields) -> None:
    """Add fields to the request's log line (written by RequestLog when the response ends)."""
    request.state.log = {**getattr(request.state, "log", {}), **fields}


async def in_worker(server: Server, fn: Callable, *args, **kwargs):
    """Run a whole generation on the server's own threads (one per admitted request). On asyncio's default
    executor (min(32, CPUs + 4) threads) enough of them would take every thread, and each short call behind them
    (an embedding request's token count) would wait for a generation to end instead of for one token."""
    return await asyncio.get_running_loop().run_in_executor(server.workers, partial(fn, *args, **kwargs))


async def watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` when the client goes away (a non-streaming request still generating)."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.2)


def embedding_texts(server: Server, body: EmbeddingRequest) -> list[str]:
    """The inputs as texts: token arrays are decoded with the model's tokenizer."""
    given = body.input
    if isinstance(given, str):
        texts = [given]
    elif given and isinstance(given[0], int):
        texts = [decode_ids(server, given)]
    else:
        texts = [t if isinstance(t, str) else decode_ids(server, t) for t in given]
    if not texts:
        raise bad_request("input is empty", "input")
    if len(texts) > server.config.max_inputs:
        raise bad_request(f"{len(texts)} inputs; at most {server.config.max_inputs} per request", "input")
    for i, t in enumerate(texts):
        if not t.strip():
            raise bad_request(f"input[{i}] is empty; there is nothing to embed", "input")
    return texts


def decode_ids(server: Server, ids: list[int]) -> str:
    """A token array's text."""
    return server.model.decode(checked_ids(server, ids, "input"))


def checked_ids(server: Server, ids: list[int], param: str) -> list[int]:
    """``ids``, if all are in the vocabulary: one outside is the client's error (the tokenizer would raise on a
    negative one and silently drop one too large, the embedding layer would index out of range)."""
    vocab = server.model.vocab_size
    bad = next((i for i in ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside the model's vocabulary (0 to {vocab - 1})", param)
    return ids


def count_tokens(server: Server, texts: list[str], instruction: str) -> tuple[list[int], int]:
    """Text tokens of each input as encode will run it, and the tokens of the format and instruction around them
    (the most of any input)."""
    inputs = server.model.embedding_inputs(texts, instruction)
    counts = [sum(x.text_mask) for x in inputs]
    prefix = max(len(x.ids) - n for x, n in zip(inputs, counts, strict=True))
    return counts, prefix


async def embed_route(server: Server, body: EmbeddingRequest, request: Request) -> JSONResponse:
    check_model(server, body.model)
    texts = embedding_texts(server, body)
    instruction = server.config.default_instruction if body.instruction is None else body.instruction
    counts, prefix = await asyncio.to_thread(count_tokens, server, texts, instruction)
    limit = min(server.max_input_tokens, server.model.context_length - prefix)
    for i, n in enumerate(counts):
        if n > limit:
            raise bad_request(f"input[{i}] has {n} tokens; the limit is {limit} (with the instruction, the "
                              f"model's context is {server.model.context_length})", "input")  # fmt: skip
    if body.dimensions is not None and body.dimensions > server.model.dim:
        raise bad_request(f"dimensions={body.dimensions} exceeds the model's {server.model.dim}", "dimensions")
    async with server.admission.slot():
        # Lengths are checked above; one max_length for all requests lets any of them share a batch.
        future = server.batcher.submit(texts, instruction, server.model.context_length)
        vectors = await asyncio.wrap_future(future)
    if body.dimensions is not None:  # truncated and renormalized, as OpenAI's `dimensions` does
        vectors = truncate(vectors, body.dimensions, normalize=True)
    data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)]  # fmt: skip
    tokens = sum(counts)
    note(request, inputs=len(texts), tokens=tokens)
    return JSONResponse({"object": "list", "data": data, "model": server.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip


def sampling_params(server: Server, body: Sampling, max_tokens: int | None, default_max: int | None) -> SamplingParams:
    cap = server.config.max_tokens_cap
    if max_tokens is not None and max_tokens > cap:
        raise bad_request(f"max_tokens={max_tokens} exceeds this server's cap of {cap}", "max_tokens")
    try:
        return SamplingParams(
            max_new_tokens=max_tokens or default_max or cap,
            temperature=1.0 if body.temperature is None else body.temperature,  # OpenAI's defaults
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=body.stop or [],
            seed=body.seed,
        )
    except (TypeError, ValueError) as e:
        raise bad_request(str(e)) from e


def completion_prompts(server: Server, body: CompletionRequest) -> list[str | list[int]]:
    """The prompts of a text completion request: strings or token arrays (OpenAI's four shapes of ``prompt``)."""
    given = body.prompt
    prompts = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) else list(given)
    if not prompts:
        raise bad_request("prompt is an empty list", "prompt")
    if len(prompts) > server.config.max_prompts:
        raise bad_request(f"{len(prompts)} prompts; at most {server.config.max_prompts} per request", "prompt")
    if len(prompts) > 1 and body.stream:
        raise bad_request("stream=true takes one prompt; send several prompts without streaming", "stream")
    return prompts


def all_prompt_ids(server: Server, prompts: list, params: SamplingParams, raw: bool, explicit_max: bool):
    """``prompt_ids`` of each prompt; with several, an error names the prompt's index."""
    ids = []
    for i, prompt in enumerate(prompts):
        try:
            ids.append(prompt_ids(server, prompt, params, raw, explicit_max))
        except APIError as e:
            if len(prompts) == 1:
                raise
            raise bad_request(f"prompt[{i}]: {e.message}", e.param) from e
    return ids


def prompt_ids(server: Server, prompt, params: SamplingParams, raw: bool, explicit_max: bool):
    """Prompt ids; without an explicit max_tokens the answer gets what is left of the context (up to the cap).
    A raw prompt may be a token array, taken as it is."""
    model = server.model
    try:
        if raw and isinstance(prompt, list):
            ids = model.as_ids(checked_ids(server, prompt, "prompt"))
        else:
            ids = model.prompt_ids(prompt, 1, raw=raw)
    except (TypeError, ValueError) as e:
        raise bad_request(str(e), "messages" if not raw else "prompt") from e
    if ids.shape[1] == 0:  # nothing to continue from; generate would fail on an empty sequence
        raise bad_request("prompt is empty", "prompt")
    room = model.context_length - ids.shape[1]
    if not explicit_max:
        params.max_new_tokens = max(min(params.max_new_tokens, room), 1)
    if ids.shape[1] + params.max_new_tokens > model.context_length:
        raise bad_request(f"the prompt has {ids.shape[1]} tokens; with max_tokens={params.max_new_tokens} that "
                          f"exceeds the model's context of {model.context_length} tokens", "max_tokens")  # fmt: skip
    return ids


async def generate_route(server: Server, body: Sampling, request: Request, prompts: list, raw: bool):
    """One answer per prompt (a chat's messages, or a raw completion prompt); several prompts are decoded together
    (``generation.complete_batch``), in batches of ``config.generate_batch_size``, and never streamed."""
    check_model(server, body.model)
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    params = sampling_params(server, body, max_tokens, 16 if raw else None)  # OpenAI: completions default to 16
    all_ids = await asyncio.to_thread(all_prompt_ids, server, prompts, params, raw, max_tokens is not None or raw)
    kind = "text_completion" if raw else "chat.completion"
    reply = Reply(server.name, kind, sum(ids.shape[1] for ids in all_ids))
    cancel = threading.Event()
    if body.stream:
        ids = all_ids[0]
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = server.model.stream(ids, params, cancel=cancel, gate=server.gate)
        await server.admission.enter()
        return stream_response(server, request, reply, include_usage, stream, cancel)
    async with server.admission.slot():
        watcher = asyncio.create_task(watch_disconnect(request, cancel))
        try:
            model, gate = server.model, server.gate
            if len(all_ids) == 1:
                results = [await in_worker(server, model.complete, all_ids[0], params, cancel=cancel, gate=gate)]
            else:
                batch = server.config.generate_batch_size
                results = await in_worker(server, model.complete_many, all_ids, params, batch, cancel, gate)
        finally:
            cancel.set()
            watcher.cancel()
    completion_tokens = sum(r.completion_tokens for r in results)
    extra = {"prompts": len(results)} if len(results) > 1 else {}
    note(request, **extra, prompt_tokens=reply.prompt_tokens, completion_tokens=completion_tokens)
    return JSONResponse(reply.whole(results))


def once(fn: Callable[[], None]) -> Callable[[], None]:
    done = threading.Event()

    def call() -> None:
        if not done.is_set():
            done.set()
            fn()

    return call


def stream_response(
    server: Server,
    request: Request,
    reply: Reply,
    include_usage: bool,
    stream: Stream,
    cancel: threading.Event,
    first_event: dict | None = None,
) -> StreamingResponse:
    """Server-sent events of a generation ``stream`` (not yet started) that stops on ``cancel``. The caller has
    entered ``server.admission``; the stream leaves it when it ends, however it ends (also when the client left
    before the first byte and the stream never started)."""
    leave = once(server.admission.leave)

    async def events() -> AsyncIterator[str]:
        try:
            if first_event is not None:
                yield sse(first_event)
            if reply.kind == "chat.completion":
                yield sse(reply.chunk("", first=True))
            async for piece in iterate_in_threadpool(stream.pieces):
                yield sse(reply.chunk(piece))
            outcome = stream.result
            reason = outcome.finish_reason if outcome.finish_reason in ("stop", "length") else "stop"
            yield sse(reply.chunk(None, reason))
            if include_usage:
                yield sse(reply.usage_chunk(outcome.completion_tokens))
            yield sse("[DONE]")
            note(request, prompt_tokens=reply.prompt_tokens, completion_tokens=outcome.completion_tokens)
        finally:
            cancel.set()  # a client that went away ends generation at the next token
            try:
                # A client that leaves (the openai client does, right after [DONE]) cancels this task, and the
                # cancellation would hit this await too: shielded, the generation is closed and the place given
                # back now, not when the garbage collector finds the response.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(stream.pieces.close)
            finally:
                leave()

    body = events()
    weakref.finalize(body, leave)
    return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def rag_answer_route(server: Server, body: RagRequest, request: Request):
    check_model(server, body.model)
    if not body.question.strip():
        raise bad_request("question is empty", "question")
    if body.max_tokens > server.config.max_tokens_cap:
        raise bad_request(f"max_tokens={body.max_tokens} exceeds this server's cap of "
                          f"{server.config.max_tokens_cap}", "max_tokens")  # fmt: skip
    rag, cache = server.rag, body.cache or server.config.rag_cache
    # Refused, as an over-long chat prompt is, rather than cut as the Python API does (with a warning in a log the
    # client never sees).
    tokens, limit = await asyncio.to_thread(rag.question_tokens, body.question), rag.question_limit(body.max_tokens)
    if tokens > limit:
        raise bad_request(f"the question has {tokens} tokens; with max_tokens={body.max_tokens} the limit is {limit} "
                          "(half the context, the rest is for the documents)", "question")  # fmt: skip
    sampling = {"temperature": body.temperature, "top_p": body.top_p, "stop": body.stop or [], "seed": body.seed,
                "recompute_ratio": body.recompute_ratio}  # fmt: skip
    if body.stream:
        cancel = threading.Event()
        await server.admission.enter()
        try:
            hits, stream = await asyncio.to_thread(rag.stream, body.question, body.k, cache, gate=server.gate,
                                                   max_new_tokens=body.max_tokens, cancel=cancel,
                                                   **sampling)  # fmt: skip
        except ValueError as e:
            server.admission.leave()
            raise bad_request(str(e)) from e
        except BaseException:
            server.admission.leave()
            raise
        documents = {"object": "rag.documents", "cache": cache, "documents": [hit_dict(h) for h in hits]}
        reply = Reply(server.name, "chat.completion", 0)
        return stream_response(server, request, reply, False, stream, cancel, first_event=documents)
    async with server.admission.slot():
        try:
            answer = await in_worker(server, rag.answer, body.question, body.k, cache,
                                     max_new_tokens=body.max_tokens, gate=server.gate, **sampling)  # fmt: skip
        except ValueError as e:
            raise bad_request(str(e)) from e
    usage = {"prompt_tokens": answer.prompt_tokens, "cached_tokens": answer.cached_tokens,
             "completion_tokens": answer.completion_tokens,
             "total_tokens": answer.prompt_tokens + answer.completion_tokens}  # fmt: skip
    note(request, cache=cache, prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens)
    return JSONResponse({"object": "rag.answer", "model": server.name, "answer": answer.text, "cache": cache,
                         "finish_reason": answer.finish_reason, "documents": [hit_dict(h) for h in answer.hits],
                         "usage": usage, "seconds": answer.seconds})  # fmt: skip
