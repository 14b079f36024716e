"""Continuous batching (grit.decoding): generations decoded together give what each gives alone."""

from __future__ import annotations

import re
import threading

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from grit import generation
from grit.decoding import ContinuousDecoder, Row, decode_together, pick, sample, unsupported
from grit.generation import SamplingParams, finish
from grit.serve.scheduler import FairGate

PROMPTS = [
    "Hello there",
    "The logging module defines functions and classes which implement a flexible event logging system",
    "Hi",
    "argparse makes it easy to write user-friendly command-line interfaces",
    "The json module",
]


@pytest.fixture(params=["llama", "transformers"])
def decoder(tiny_grit, request):
    """Each test on both step functions (grit.decode_step): the fast Llama path and the model's own forward."""
    d = ContinuousDecoder(tiny_grit.lm, tiny_grit.tokenizer, FairGate(), max_batch=8, step=request.param)
    yield d
    d.close()


def alone(grit, ids, params, cache=None) -> str:
    """The answer of transformers' generate, one prompt at a time (under a plain gate, which takes that path)."""
    return generation.complete(grit.lm, grit.tokenizer, ids, params, cache, gate=FairGate()).text


def together(grit, decoder, ids_list, params_list) -> list[str]:
    """All started before any is awaited: they join the batch while the earlier ones are decoding."""
    futures = [decoder.start(ids, params) for ids, params in zip(ids_list, params_list, strict=True)]
    return [finish(grit.tokenizer, ids, f.result(), p).text
            for ids, f, p in zip(ids_list, futures, params_list, strict=True)]  # fmt: skip


def test_greedy_answers_decoded_together_equal_one_at_a_time(tiny_grit, decoder):
    ids = [tiny_grit.prompt_ids(p, 24) for p in PROMPTS]
    # Different lengths: rows leave the batch at different steps (and the columns only they used go with them).
    params = [SamplingParams(n) for n in (24, 7, 16, 1, 11)]
    expected = [alone(tiny_grit, i, p) for i, p in zip(ids, params, strict=True)]
    assert together(tiny_grit, decoder, ids, params) == expected
    assert max(decoder.batch_sizes) > 1  # they did share steps


def test_a_seeded_answer_does_not_depend_on_what_else_runs(tiny_grit, decoder):
    ids = [tiny_grit.prompt_ids(p, 16) for p in PROMPTS]
    seeded = SamplingParams(16, temperature=0.9, top_p=0.8, seed=11)
    others = [SamplingParams(16, temperature=1.0, seed=s) for s in range(3)] + [SamplingParams(16)]
    first = together(tiny_grit, decoder, ids[:1], [seeded])[0]
    crowded = together(tiny_grit, decoder, ids[1:] + ids[:1], others + [seeded])[-1]
    # The same draws as transformers' sampling with that seed (temperature, top-p, softmax, multinomial).
    assert first == crowded == alone(tiny_grit, ids[0], seeded)


def test_stop_strings_end_a_row_and_are_cut(tiny_grit, decoder):
    ids = tiny_grit.prompt_ids(PROMPTS[1], 20)
    full = alone(tiny_grit, ids, SamplingParams(20))
    stop = full[8:11]
    params = SamplingParams(20, stop=[stop])
    got = decoder.generate(ids, params)
    expected = alone(tiny_grit, ids, params)
    assert finish(tiny_grit.tokenizer, ids, got, params).text == expected == full[: full.find(stop)]
    assert got.shape[1] - ids.shape[1] < 20  # it stopped early, not at max_new_tokens


class CancelAfter:
    """A streamer that sets ``cancel`` once ``n`` generated tokens have been put."""

    def __init__(self, cancel: threading.Event, n: int) -> None:
        self.cancel, self.n, self.tokens, self.ended = cancel, n, 0, False
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the prompt comes first, as transformers' generate sends it
            self.prompt_seen = True
            return
        self.tokens += 1
        if self.tokens == self.n:
            self.cancel.set()

    def end(self) -> None:
        self.ended = True


def test_cancel_ends_one_generation_and_the_others_go_on(tiny_grit, decoder):
    ids = [tiny_grit.prompt_ids(p, 20) for p in PROMPTS[:3]]
    params = SamplingParams(20)
    cancel = threading.Event()
    streamer = CancelAfter(cancel, 3)
    futures = [decoder.start(ids[0], params), decoder.start(ids[1], params, cancel=cancel, streamer=streamer),
               decoder.start(ids[2], params)]  # fmt: skip
    outs = [f.result() for f in futures]
    assert outs[1].shape[1] - ids[1].shape[1] == 3 and streamer.ended
    assert [finish(tiny_grit.tokenizer, ids[i], outs[i], params).text for i in (0, 2)] == [
        alone(tiny_grit, ids[i], params) for i in (0, 2)
    ]


def test_at_most_max_batch_rows_decode_at_once_and_the_rest_wait_their_turn(tiny_grit):
    decoder = ContinuousDecoder(tiny_grit.lm, tiny_grit.tokenizer, FairGate(), max_batch=2)
    try:
        ids = [tiny_grit.prompt_ids(p, 12) for p in PROMPTS]
        params = [SamplingParams(12)] * len(ids)
        assert together(tiny_grit, decoder, ids, params) == [alone(tiny_grit, i, params[0]) for i in ids]
        assert max(decoder.batch_sizes) == 2
    finally:
        decoder.close()


def test_decoding_on_top_of_a_cache_of_the_first_tokens(tiny_grit, decoder):
    """RAG hands over the states of the documents; the decoder prefills only the rest."""
    ids = tiny_grit.prompt_ids(PROMPTS[1], 12)
    span = tiny_grit.span_cache(ids[0, :10].tolist(), "causal")
    params = SamplingParams(12)
    got = decoder.generate(ids, params, past_key_values=tiny_grit.joined_cache([span]))  # the cache grows: one each
    expected = alone(tiny_grit, ids, params, tiny_grit.joined_cache([span]))
    assert finish(tiny_grit.tokenizer, ids, got, params).text == expected == alone(tiny_grit, ids, params)


def test_decoding_when_the_cache_holds_the_whole_prompt(tiny_grit, decoder):
    """A cache of every prompt token (a prompt that is all cached spans): the last token runs again for its
    logits, after the cache is cut back by one (transformers 5.24 changed what ``crop`` takes)."""
    ids = tiny_grit.prompt_ids(PROMPTS[1], 12)
    params = SamplingParams(12)
    whole = tiny_grit.joined_cache([tiny_grit.span_cache(ids[0].tolist(), "causal")])
    got = decoder.generate(ids, params, past_key_values=whole)
    assert finish(tiny_grit.tokenizer, ids, got, params).text == alone(tiny_grit, ids, params)


def test_streaming_and_complete_many_through_the_decoder(tiny_grit, decoder):
    params = SamplingParams(12, temperature=0.8, seed=4)
    ids = tiny_grit.prompt_ids(PROMPTS[0], 12)
    stream = tiny_grit.stream(ids, params, gate=decoder)
    assert "".join(stream.pieces) == stream.result.text == alone(tiny_grit, ids, params)
    prompts = [tiny_grit.prompt_ids(p, 8) for p in PROMPTS]
    many = tiny_grit.complete_many(prompts, SamplingParams(8), gate=decoder)
    assert [g.text for g in many] == [alone(tiny_grit, p, SamplingParams(8)) for p in prompts]
    assert all(g.finish_reason in ("stop", "length") for g in many)


def test_a_failed_step_fails_its_batch_and_the_decoder_goes_on(tiny_grit, decoder, monkeypatch):
    ids = tiny_grit.prompt_ids(PROMPTS[0], 8)
    real = decoder._step
    monkeypatch.setattr(decoder, "_step", lambda: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        decoder.generate(ids, SamplingParams(8))
    monkeypatch.setattr(decoder, "_step", real)
    params = SamplingParams(8)
    got = decoder.generate(ids, params)
    assert finish(tiny_grit.tokenizer, ids, got, params).text == alone(tiny_grit, ids, params)


def test_min_new_tokens_holds_back_the_end_token(tiny_grit):
    ends = {tiny_grit.end_token_id}
    logits = torch.zeros(tiny_grit.vocab_size)
    logits[tiny_grit.end_token_id] = 10.0  # the end token is by far the likeliest
    row = Row(torch.zeros((1, 1), dtype=torch.long), SamplingParams(4, min_new_tokens=2), None, None, None, None, ends)
    assert pick(row, logits) != tiny_grit.end_token_id
    row.tokens = [5, 6]
    assert pick(row, logits) == tiny_grit.end_token_id


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (1.3, 0.5), (0.5, 0.05)])
def test_sampling_draws_what_transformers_draws(temperature, top_p):
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(0)) * 3
    params = SamplingParams(1, temperature=temperature, top_p=top_p)
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    probs = scores.softmax(-1)
    for seed in range(20):
        expected = int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)))
        assert sample(logits[0], params, torch.Generator().manual_seed(seed)) == expected


def test_models_the_decoder_cannot_batch_are_named(tiny_grit, monkeypatch):
    assert unsupported(tiny_grit.lm) is None
    monkeypatch.setattr(tiny_grit.lm.generation_config, "repetition_penalty", 1.3)
    assert "repetition_penalty" in unsupported(tiny_grit.lm)
    with pytest.raises(ValueError, match="repetition_penalty"):
        ContinuousDecoder(tiny_grit.lm, tiny_grit.tokenizer, FairGate())
    monkeypatch.undo()
    monkeypatch.setattr(tiny_grit.lm.config, "sliding_window", 8, raising=False)
    monkeypatch.setattr(tiny_grit.lm.config, "layer_types", ["sliding_attention"] * 2, raising=False)
    assert "Sliding" in (unsupported(tiny_grit.lm) or "")


@pytest.fixture(scope="module")
def sampled_text(tiny_grit):
    """A seeded answer of the tiny model (its greedy answers are all line breaks: no stop string to find there)."""
    ids = tiny_grit.prompt_ids(PROMPTS[1], 30)
    return alone(tiny_grit, ids, SamplingParams(30, temperature=1.0, seed=3))


ALONE_CASES = {
    "greedy": dict(max_new_tokens=20),
    "seeded": dict(max_new_tokens=20, temperature=0.9, top_p=0.8, seed=3),
    "fixed length": dict(max_new_tokens=12, min_new_tokens=12),
    "stop string": dict(max_new_tokens=30, temperature=1.0, seed=3),  # the stop: a word of that answer
}


@pytest.mark.parametrize("step", ["llama", "transformers"])
@pytest.mark.parametrize("case", sorted(ALONE_CASES))
def test_one_prompt_decoded_alone_is_what_generate_decodes(tiny_grit, sampled_text, case, step):
    settings = dict(ALONE_CASES[case])
    if case == "stop string":
        words = re.findall("[a-z]{3,}", sampled_text)
        assert len(words) > 1
        settings["stop"] = [words[1]]
    params = SamplingParams(**settings)
    ids = tiny_grit.prompt_ids(PROMPTS[1], params.max_new_tokens)
    out = decode_together(tiny_grit.lm, tiny_grit.tokenizer, [ids], params, step=step)[0]
    got = finish(tiny_grit.tokenizer, ids, out, params)
    assert got == generation.complete(tiny_grit.lm, tiny_grit.tokenizer, ids, params, gate=FairGate())
    if case == "stop string":
        assert got.finish_reason == "stop" and got.text == sampled_text[: sampled_text.index(words[1])]
    # Without a gate, complete itself takes this path.
    assert generation.complete(tiny_grit.lm, tiny_grit.tokenizer, ids, params) == got


def test_a_generation_alone_streams_its_pieces_and_stops_when_cancelled(tiny_grit, sampled_text):
    pieces = list(tiny_grit.chat(PROMPTS[1], max_new_tokens=30, temperature=1.0, seed=3))
    assert "".join(pieces) == sampled_text and len(pieces) > 1
    cancel = threading.Event()
    cancel.set()  # set before it starts: one token, then it ends as cancelled
    ids = tiny_grit.prompt_ids(PROMPTS[1], 30)
    got = generation.complete(tiny_grit.lm, tiny_grit.tokenizer, ids, SamplingParams(30), cancel=cancel)
    assert (got.completion_tokens, got.finish_reason) == (1, "cancelled")


@pytest.mark.parametrize("step", ["llama", "transformers"])
def test_prompts_decoded_together_on_one_thread_answer_as_each_alone(tiny_grit, sampled_text, step):
    ids = [tiny_grit.prompt_ids(p, 16) for p in PROMPTS]
    words = re.findall("[a-z]{3,}", sampled_text)
    # Seeded samples (each row draws from its own generator) and a stop string that ends one row early.
    params = SamplingParams(16, temperature=1.0, seed=3, stop=[words[0]])
    out = decode_together(tiny_grit.lm, tiny_grit.tokenizer, ids, params, step=step)
    got = [finish(tiny_grit.tokenizer, i, o, params) for i, o in zip(ids, out, strict=True)]
    assert got == [generation.complete(tiny_grit.lm, tiny_grit.tokenizer, i, params, gate=FairGate()) for i in ids]
    assert sorted(g.completion_tokens for g in got)[0] < 16 <= max(g.completion_tokens for g in got)  # one ended early
    cancel = threading.Event()
    cancel.set()
    greedy = SamplingParams(16)
    out = decode_together(tiny_grit.lm, tiny_grit.tokenizer, ids, greedy, cancel=cancel, step=step)
    reasons = [finish(tiny_grit.tokenizer, i, o, greedy, cancel).finish_reason for i, o in zip(ids, out, strict=True)]
    assert reasons == ["cancelled"] * len(ids)


def test_a_cache_or_a_streamer_is_refused_for_a_batch_and_no_prompts_give_no_answers(tiny_grit):
    ids = [tiny_grit.prompt_ids(p, 4) for p in PROMPTS[:2]]
    with pytest.raises(ValueError, match="for one prompt, not a batch"):
        decode_together(tiny_grit.lm, tiny_grit.tokenizer, ids, SamplingParams(4), streamer=object())
    assert decode_together(tiny_grit.lm, tiny_grit.tokenizer, [], SamplingParams(4)) == []
