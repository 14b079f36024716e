"""One thread runs the served model's forward passes (``ModelThread``, ``FairGate.run``): the others hand their work
over under the gate, and decoding steps run on the decoder's own thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from openai import OpenAI

from grit import generation
from grit.rag.answer import RAG
from grit.rag.documents import Document
from grit.rag.index import Index
from grit.serve.app import create_app
from grit.serve.config import ServeConfig
from grit.serve.scheduler import FairGate, ModelThread

from .serveutil import MODEL, httpx, serve


@pytest.fixture
def model_thread():
    worker = ModelThread(name="grit-model-test")
    yield worker
    worker.close()


def test_a_call_runs_on_the_model_thread_and_returns_its_result(model_thread):
    assert model_thread.call(lambda a, b=0: (threading.current_thread().name, a + b), 2, b=3) == ("grit-model-test", 5)


def test_a_call_raises_the_exception_of_its_job_in_the_caller(model_thread):
    def fail():
        raise ValueError("bad input on the model thread")

    with pytest.raises(ValueError, match="bad input on the model thread"):
        model_thread.call(fail)
    assert model_thread.call(lambda: 7) == 7  # the thread survives a failed job


@pytest.mark.parametrize("mode", ["inference", "no_grad", "grad"])
def test_a_call_runs_in_the_callers_autograd_mode(model_thread, mode):
    """torch's grad and inference modes are per thread: the job must see the caller's, or a prefill under
    inference_mode would build a cache that records autograd history (or the other way round)."""

    def modes():
        return torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    context = {"inference": torch.inference_mode(), "no_grad": torch.no_grad(), "grad": torch.enable_grad()}[mode]
    with context:
        assert model_thread.call(modes) == modes()


def test_a_call_after_close_is_refused_not_left_waiting():
    worker = ModelThread(name="grit-model-closed")
    worker.close()
    with pytest.raises(RuntimeError, match="closed"):
        worker.call(lambda: 1)


def test_a_call_from_the_model_thread_runs_at_once(model_thread):
    """A job that hands work over again would wait for itself forever."""
    inner = model_thread.call(lambda: model_thread.call(lambda: threading.current_thread().name))
    assert inner == "grit-model-test"


def test_the_gate_runs_work_on_its_model_thread_or_in_place(model_thread):
    name = lambda: threading.current_thread().name  # noqa: E731
    with FairGate(model_thread).hold():
        assert FairGate(model_thread).run(name) == "grit-model-test"
    assert FairGate().run(name) == threading.current_thread().name


def test_offering_the_gate_from_inside_run_is_refused_not_a_deadlock(model_thread):
    gate = FairGate(model_thread)
    with gate.hold(), pytest.raises(RuntimeError, match="between runs"):
        gate.run(gate.between_tokens)


def layer_threads(model) -> tuple[list[tuple[str, int]], object]:
    """(thread name, tokens per row) of every call of the model's first decoder layer, and the hook's handle."""
    seen: list[tuple[str, int]] = []
    layer = next(m for name, m in model.lm.named_modules() if name.endswith("layers.0"))

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append((threading.current_thread().name, hidden.shape[1]))

    return seen, layer.register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("max_decode_batch", [8, 1])
def test_every_forward_pass_of_the_server_runs_on_its_model_thread(tiny_grit, monkeypatch, max_decode_batch):
    """Embeddings, chunked prefills (whole and streamed chats), RAG's retrieval and cache join and the decoder's
    steps all run on the server's model thread. With ``max_decode_batch=1`` (no shared batch) transformers'
    generate decodes in the request's thread, but its prefill chunks still run on the model thread."""
    monkeypatch.setattr(generation, "PREFILL_CHUNK", 16)  # the chats' prompts below take several chunks
    docs = [
        Document("json", "The json module exposes an API familiar to users of marshal and pickle.", "json"),
        Document("logging", "The logging module defines functions and classes for event logging.", "logging"),
    ]
    rag = RAG(tiny_grit, Index.build(docs, tiny_grit))
    worker = ModelThread(name="grit-model-served")
    app = create_app(tiny_grit, ServeConfig(model_name=MODEL, max_decode_batch=max_decode_batch), rag, worker)
    long_chat = [{"role": "user", "content": "Tell me about the json module and the logging module. " * 4}]
    seen, hook = layer_threads(tiny_grit)
    try:
        with serve(app) as live, OpenAI(base_url=f"{live.url}/v1", api_key="-", max_retries=0, timeout=60) as c:

            def chat(stream: bool) -> str:
                r = c.chat.completions.create(model=MODEL, messages=long_chat, max_tokens=6, temperature=0,
                                              stream=stream)  # fmt: skip
                return "".join(x.choices[0].delta.content or "" for x in r) if stream else r.choices[0].message.content

            with ThreadPoolExecutor(4) as pool:
                jobs = [pool.submit(c.embeddings.create, model=MODEL, input=["one text", "and another one"]),
                        pool.submit(chat, False), pool.submit(chat, True),
                        pool.submit(httpx.post, f"{live.url}/v1/rag",
                                    json={"question": "What does json expose?", "k": 2, "max_tokens": 4})]  # fmt: skip
                for job in jobs:
                    job.result(timeout=120)
            assert jobs[3].result().status_code == 200, jobs[3].result().text
    finally:
        hook.remove()
    threads = {name for name, _ in seen}
    wide = {name for name, tokens in seen if tokens > 1}  # embedding passes, prefill chunks, RAG's passes
    assert wide == {"grit-model-served"}
    if max_decode_batch > 1:
        assert threads == {"grit-model-served"}
    else:  # the one-token steps of generate run in the requests' threads (grit-generate, or a stream's)
        assert "grit-model-served" in threads and len(threads) > 1


def test_decode_threads_reach_the_decoder_and_a_negative_count_is_refused(tiny_grit):
    app = create_app(tiny_grit, ServeConfig(decode_threads=2))
    try:
        assert app.state.server.gate.threads == 2
    finally:
        app.state.server.gate.close()
    with pytest.raises(ValueError, match="decode_threads must be >= 0"):
        ServeConfig(decode_threads=-1)


@pytest.mark.parametrize("step", ["llama", "transformers"])
def test_the_decoding_step_reaches_the_decoder(tiny_grit, step):
    app = create_app(tiny_grit, ServeConfig(decode_step=step))
    try:
        assert app.state.server.gate.step_fn.__name__ == f"{step}_step"
    finally:
        app.state.server.gate.close()


def test_an_unknown_decoding_step_is_refused():
    with pytest.raises(ValueError, match="decode_step must be one of auto, llama, transformers, got 'fast'"):
        ServeConfig(decode_step="fast")


def test_greedy_answers_decoded_on_the_model_thread_with_all_threads_equal_one_at_a_time(tiny_grit, model_thread):
    """``--decode-threads`` changes how a step is computed (threads split the products), not what it computes."""
    from grit.decoding import ContinuousDecoder
    from grit.generation import SamplingParams

    prompts = [tiny_grit.prompt_ids([{"role": "user", "content": q}], 8) for q in ("Hi there", "What is json?")]
    want = [tiny_grit.complete(p, SamplingParams(8)).text for p in prompts]
    decoder = ContinuousDecoder(tiny_grit.lm, tiny_grit.tokenizer, FairGate(model_thread), max_batch=4, threads=2)
    try:
        outs = [f.result(timeout=60) for f in [decoder.start(p, SamplingParams(8)) for p in prompts]]
    finally:
        decoder.close()
    got = [tiny_grit.decode(out[0, p.shape[1] :].tolist()) for out, p in zip(outs, prompts, strict=True)]
    assert got == want
