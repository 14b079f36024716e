"""The OpenAI-compatible server end to end: a real uvicorn server on a loopback port, the official openai client,
and the tiny random Llama. Served results must equal what ``GritModel`` computes in-process."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from openai import OpenAI

from grit import generation
from grit.generation import SamplingParams

from .serveutil import API_KEY, MODEL, httpx, row_cosines, vectors, wait_until

TEXTS = ["The json module exposes an API.", "Logging defines functions for event logging.", "a cat"]
INSTRUCTION = "Retrieve documents that answer the question"
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What does the json module do?"}]
PROMPT = "The argparse module makes it easy to"
# The tiny random model answers every prompt greedily with newlines; seeded sampling gives varied text (the server
# seeds inside the model's gate, so a seed reproduces an answer exactly).
SEEDED = {"temperature": 1.0, "seed": 0}


def greedy_token_count(tiny_grit, ids: torch.Tensor, max_new_tokens: int) -> int:
    """Tokens plain transformers generates greedily after ``ids`` (independent of grit's own counting)."""
    with torch.inference_mode():
        out = tiny_grit.lm.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tiny_grit.tokenizer.pad_token_id,
        )
    return out.shape[1] - ids.shape[1]


# --- embeddings ------------------------------------------------------------------------------------------------


def test_embeddings_equal_encode(client, tiny_grit):
    response = client.embeddings.create(model=MODEL, input=TEXTS)  # the client asks for base64
    got = vectors(response)
    assert got.shape == (len(TEXTS), tiny_grit.dim)
    assert row_cosines(got, tiny_grit.encode(TEXTS)).min() >= 0.9999
    assert response.model == MODEL and [d.index for d in response.data] == [0, 1, 2]


def test_base64_and_float_encodings_decode_to_the_same_vectors(client, http):
    as_base64 = vectors(client.embeddings.create(model=MODEL, input=TEXTS))
    as_float = vectors(client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float"))
    np.testing.assert_allclose(as_base64, as_float, rtol=0, atol=1e-6)
    raw = http.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[0], "encoding_format": "float"}).json()
    assert isinstance(raw["data"][0]["embedding"], list)
    np.testing.assert_allclose(raw["data"][0]["embedding"], as_float[0], rtol=0, atol=1e-6)


def test_dimensions_truncates_and_renormalizes(client, tiny_grit):
    got = vectors(client.embeddings.create(model=MODEL, input=TEXTS, dimensions=8))
    assert got.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    full = tiny_grit.encode(TEXTS)[:, :8]
    assert row_cosines(got, full / np.linalg.norm(full, axis=1, keepdims=True)).min() >= 0.9999


def test_instruction_extension_equals_encode_with_it(client, tiny_grit):
    got = vectors(client.embeddings.create(model=MODEL, input=TEXTS, extra_body={"instruction": INSTRUCTION}))
    assert row_cosines(got, tiny_grit.encode(TEXTS, INSTRUCTION)).min() >= 0.9999
    assert row_cosines(got, tiny_grit.encode(TEXTS)).max() < 0.9999


def test_token_array_input_equals_its_decoded_text(client, tiny_grit):
    ids = [tiny_grit.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    decoded = [tiny_grit.tokenizer.decode(x) for x in ids]
    one = vectors(client.embeddings.create(model=MODEL, input=ids[0]))
    assert one.shape == (1, tiny_grit.dim)
    assert row_cosines(one, tiny_grit.encode(decoded[:1])).min() >= 0.9999
    many = vectors(client.embeddings.create(model=MODEL, input=ids))
    assert row_cosines(many, tiny_grit.encode(decoded)).min() >= 0.9999


def test_embedding_usage_counts_the_text_tokens(client, tiny_grit):
    usage = client.embeddings.create(model=MODEL, input=TEXTS).usage
    expected = sum(len(tiny_grit.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)
    assert usage.prompt_tokens == usage.total_tokens == expected


# --- chat and text completions ---------------------------------------------------------------------------------


def test_greedy_chat_equals_generate(client, tiny_grit):
    response = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=12)
    message = response.choices[0].message
    assert message.role == "assistant"
    assert message.content == tiny_grit.generate(CHAT, max_new_tokens=12)
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")


def test_seeded_sampled_chat_equals_generate(client, tiny_grit):
    response = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, **SEEDED)
    expected = tiny_grit.generate(CHAT, max_new_tokens=24, **SEEDED)
    assert response.choices[0].message.content == expected and expected.strip()


def test_chat_usage_and_length_finish(client, tiny_grit):
    ids = tiny_grit.prompt_ids(CHAT, 1)
    assert greedy_token_count(tiny_grit, ids, 12) == 12  # the prompt runs to the limit without an end token
    response = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=12)
    usage = response.usage
    assert usage.prompt_tokens == ids.shape[1]
    assert usage.completion_tokens == 12
    assert usage.total_tokens == usage.prompt_tokens + 12
    assert response.choices[0].finish_reason == "length"


@pytest.mark.parametrize("sampling", [{"temperature": 0}, SEEDED], ids=["greedy", "seeded"])
def test_chat_stream_joins_to_the_whole_answer(client, sampling):
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, **sampling)
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, **sampling,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == whole.choices[0].message.content
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"


def test_stream_without_include_usage_sends_no_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=4,
                                                 stream=True))  # fmt: skip
    assert chunks and all(c.choices and c.usage is None for c in chunks)


def stop_in_the_middle(text: str) -> str:
    """A 3-character piece from the middle of ``text`` that is not all whitespace."""
    for start in range(len(text) // 2, len(text) - 3):
        piece = text[start : start + 3]
        if piece.strip() and piece.isprintable():
            return piece
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_sequence_cuts_the_answer(client):
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, **SEEDED)
    text = full.choices[0].message.content
    stop = stop_in_the_middle(text)
    assert text.index(stop) > 0
    cut = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, stop=[stop], **SEEDED)
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens


def test_stop_sequence_cuts_the_stream(client):
    text = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, **SEEDED)
    text = text.choices[0].message.content
    stop = stop_in_the_middle(text)
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, stop=stop, stream=True,
                                                 **SEEDED))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[: text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completion_equals_raw_prompt_generation_with_16_tokens_by_default(client, tiny_grit):
    ids = tiny_grit.prompt_ids(PROMPT, 16, raw=True)
    assert greedy_token_count(tiny_grit, ids, 16) == 16  # the prompt does not end early, so 16 shows the default
    expected = generation.complete(tiny_grit.lm, tiny_grit.tokenizer, ids, SamplingParams(16))
    response = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0)
    assert response.choices[0].text == expected.text
    assert response.usage.completion_tokens == 16 and response.usage.prompt_tokens == ids.shape[1]
    assert response.choices[0].finish_reason == "length" and response.object == "text_completion"


@pytest.mark.parametrize("sampling", [{"temperature": 0}, SEEDED], ids=["greedy", "seeded"])
def test_completion_stream_joins_to_the_whole_text(client, sampling):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, **sampling)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, stream=True, **sampling))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_seeded_completion_equals_raw_prompt_generation(client, tiny_grit):
    ids = tiny_grit.prompt_ids(PROMPT, 10, raw=True)
    expected = generation.complete(tiny_grit.lm, tiny_grit.tokenizer, ids, SamplingParams(10, **SEEDED)).text
    response = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, **SEEDED)
    assert response.choices[0].text == expected and expected.strip()


PROMPTS = [PROMPT, "Logging defines", "The json module exposes an API for"]


def test_several_prompts_get_one_choice_each_in_order(client, tiny_grit):
    # Seeded sampling, so each choice is its own text: decoded together in the server's batch, each answer is the
    # one its prompt gets alone with that seed (each generation draws from its own seeded generator), in order.
    # A low temperature: the tiny random model's next-token distributions are near uniform, and one seed would draw
    # the same tokens for every prompt.
    sampling = {"temperature": 0.1, "seed": 0}
    ids = [tiny_grit.prompt_ids(p, 10, raw=True) for p in PROMPTS]
    expected = [generation.complete(tiny_grit.lm, tiny_grit.tokenizer, x, SamplingParams(10, **sampling)) for x in ids]
    response = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=10, **sampling)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert [c.text for c in response.choices] == [g.text for g in expected]
    assert len({g.text for g in expected}) == 3
    assert response.usage.prompt_tokens == sum(x.shape[1] for x in ids)
    assert response.usage.completion_tokens == sum(g.completion_tokens for g in expected)


def test_several_greedy_prompts_equal_one_at_a_time(client):
    together = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=8, temperature=0)
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0) for p in PROMPTS]
    assert [c.text for c in together.choices] == [r.choices[0].text for r in alone]
    assert [c.finish_reason for c in together.choices] == [r.choices[0].finish_reason for r in alone]


def test_token_array_prompts_equal_their_text(client, tiny_grit):
    ids = [tiny_grit.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    as_text = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=10, **SEEDED)
    as_ids = client.completions.create(model=MODEL, prompt=ids[0], max_tokens=10, **SEEDED)
    assert as_ids.choices[0].text == as_text.choices[0].text
    assert as_ids.usage == as_text.usage
    many = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, **SEEDED)
    texts = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=10, **SEEDED)
    assert [c.text for c in many.choices] == [c.text for c in texts.choices]


def test_seeded_sampling_repeats(client):
    def sample():
        return client.chat.completions.create(model=MODEL, messages=CHAT, temperature=1.0, max_tokens=12, seed=7)

    assert sample().choices[0].message.content == sample().choices[0].message.content


# --- models, health, logging -----------------------------------------------------------------------------------


def test_models_lists_the_served_model(client, tiny_grit):
    assert [m.id for m in client.models.list().data] == [MODEL]
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL
    grit = card.model_extra["grit"]  # which model exactly, and where it runs, resolved
    assert grit["model"] == tiny_grit.identity.id and grit["embedding_dim"] == tiny_grit.dim
    assert (grit["placement"]["device"], grit["placement"]["dtype"]) == ("cpu", "float32")
    assert str(tiny_grit.path) not in json.dumps(card.model_dump())  # no file system path goes to clients


def test_health_needs_no_api_key(live):
    response = httpx.get(f"{live.url}/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["model"] == MODEL
    assert httpx.get(f"{live.url}/v1/models").status_code == 401


def test_each_request_is_logged(client, caplog):
    with caplog.at_level(logging.INFO, logger="grit.serve"):
        client.embeddings.create(model=MODEL, input="logged")

        def logged() -> bool:
            return any("POST /v1/embeddings 200" in r.getMessage() for r in caplog.records)

        wait_until(logged, 5, "the request's log line")  # written once the response has been sent
    line = next(r.getMessage() for r in caplog.records if "POST /v1/embeddings 200" in r.getMessage())
    assert "inputs=1" in line and "tokens=" in line


# --- concurrency -----------------------------------------------------------------------------------------------


def test_parallel_clients_mixing_embeddings_and_chat(live, tiny_grit):
    texts = ["parallel one", "the second text, a little longer", "three"]
    chats = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(5)]
    want_vectors = tiny_grit.encode(texts)
    want_answers = [tiny_grit.generate(c, max_new_tokens=8, temperature=1.0, seed=i) for i, c in enumerate(chats)]

    def embed(i: int):
        with OpenAI(base_url=f"{live.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
            return vectors(c.embeddings.create(model=MODEL, input=texts[i]))[0]

    def chat(i: int, stream: bool):
        with OpenAI(base_url=f"{live.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
            r = c.chat.completions.create(model=MODEL, messages=chats[i], temperature=1.0, seed=i, max_tokens=8,
                                          stream=stream)  # fmt: skip
            return "".join(x.choices[0].delta.content or "" for x in r) if stream else r.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        embedded = [pool.submit(embed, i) for i in range(3)]
        answered = [pool.submit(chat, i, stream=i >= 3) for i in range(5)]
        got_vectors = np.array([f.result(timeout=60) for f in embedded])
        got_answers = [f.result(timeout=60) for f in answered]
    assert row_cosines(got_vectors, want_vectors).min() >= 0.9999
    assert got_answers == want_answers
    wait_until(lambda: live.server.admission.inside == 0, 5, "all requests to leave")


def test_seeded_answers_are_reproducible_when_generations_interleave(live, client, tiny_grit):
    """Two seeded chats released together advance token by token in turn; each must still get its own seed's
    answer (the sampling generator is global, so each generation's state must survive the other's turns)."""
    server = live.server
    seeds = [1, 2]
    want = [tiny_grit.generate(CHAT, max_new_tokens=16, temperature=1.0, seed=s) for s in seeds]
    got: list = [None, None]

    def chat(i: int) -> None:
        r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, temperature=1.0, seed=seeds[i])
        got[i] = r.choices[0].message.content

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(2)]
    with server.gate.hold():
        for t in threads:
            t.start()
        wait_until(lambda: server.gate.waiting == 2, 10, "both chats to wait for the model")
    for t in threads:
        t.join(30)
    assert want[0] != want[1]
    assert got == want


def test_finished_streams_leave_the_server_without_garbage_collection(live, client):
    """The official client closes the connection as soon as it has read ``data: [DONE]``, which can cancel the
    server's stream before its cleanup ran. Each stream must still give its place back at once, not whenever the
    garbage collector finds the abandoned response."""
    gc.collect()
    gc.disable()
    try:
        for i in range(6):
            chunks = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, stream=True, seed=i)
            assert "".join(c.choices[0].delta.content or "" for c in chunks)
        wait_until(lambda: live.server.admission.inside == 0, 3, "the finished streams to leave the server")
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--host", "0.0.0.0"], "serves the model to the network without an API key"),
        (["--api-key-file", "EMPTY"], "is empty"),
    ],
)
def test_serve_refuses_an_open_network_address_and_an_empty_key_file(tiny_model_path, tmp_path, capsys, monkeypatch,
                                                                     argv, says):  # fmt: skip
    from grit.cli import main

    monkeypatch.delenv("GRIT_API_KEY", raising=False)
    (tmp_path / "EMPTY").write_text("\n")
    argv = [str(tmp_path / a) if a == "EMPTY" else a for a in argv]
    assert main(["serve", "--model", str(tiny_model_path), *argv]) == 2  # refused before any model is loaded
    assert says in capsys.readouterr().err


def test_the_api_key_can_come_from_a_file(tmp_path):
    from grit.cli.serve import read_key_file

    (tmp_path / "key").write_text("sk-from-file\n")
    assert read_key_file(tmp_path / "key") == "sk-from-file" and read_key_file(None) is None


def test_serve_options_come_from_serve_config(capsys):
    """Every ServeConfig field the command line offers has its flag, help and default, written once."""
    import dataclasses

    from grit.cli import build_parser
    from grit.cli.serve import config_options
    from grit.serve.config import ServeConfig

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    offered = list(config_options())
    assert len(offered) >= 18 and all(flag in text for _, flag, _ in offered)
    args = parser.parse_args(["serve", "--max-pending", "3", "--request-timeout", "2.5", "--rag-cache", "none"])
    assert (args.max_pending, args.request_timeout_s, args.rag_cache) == (3, 2.5, "none")
    defaults = parser.parse_args(["serve"])
    assert all(getattr(defaults, f.name) == f.default for f in dataclasses.fields(ServeConfig) if f.metadata["cli"])
    with pytest.raises(SystemExit):  # a cache mode that does not exist: argparse names the choices
        parser.parse_args(["serve", "--rag-cache", "everything"])
    with pytest.raises(ValueError, match="rag_cache must be one of"):
        ServeConfig(rag_cache="everything")


def scrape(http) -> dict[tuple[str, tuple], float]:
    """GET /metrics parsed: (sample name, sorted labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}  # fmt: skip


def test_metrics_count_requests_tokens_and_batches(client, http, live):
    began = time.perf_counter()
    before = scrape(http)
    embedded = client.embeddings.create(model=MODEL, input=["one text", "and another"])
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                          temperature=0)  # fmt: skip
    after = scrape(http)
    wall = time.perf_counter() - began

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("grit_requests_total", route="/v1/embeddings", status="200") == 1
    assert grew("grit_requests_total", route="/v1/chat/completions", status="200") == 1
    assert grew("grit_tokens_total", kind="embedding") == embedded.usage.prompt_tokens
    assert grew("grit_tokens_total", kind="completion") == chat.usage.completion_tokens
    assert grew("grit_tokens_total", kind="prompt") == chat.usage.prompt_tokens
    assert grew("grit_embedding_inputs_total") == 2
    assert grew("grit_request_duration_seconds_count", route="/v1/embeddings") == 1
    assert grew("grit_time_to_first_token_seconds_count") == 1
    assert grew("grit_decode_batch_size_count") == chat.usage.completion_tokens - 1  # the first token is prefill's
    assert grew("grit_embedding_batch_texts_sum") >= 2
    assert 0 < grew("grit_model_busy_seconds_total") < wall  # the model computed, and was idle part of the time
    assert after[("grit_requests_in_progress", ())] == 0 and after[("grit_generations_active", ())] == 0
    # An unknown path is counted under one label, not one per path a client makes up.
    assert http.get("/no/such/path").status_code == 404
    assert scrape(http).get(("grit_requests_total", (("route", "other"), ("status", "404"))), 0) >= 1


def test_metrics_need_the_api_key(live):
    with httpx.Client(base_url=live.url, timeout=30) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
