import threading

import pytest
import torch

from grit import generation
from grit.generation import SamplingParams

PROMPT = "Tell me about the json module."


def plain_greedy(grit, prompt, n):
    """Greedy decoding with plain transformers on the same model and chat template."""
    msgs = [{"role": "user", "content": prompt}]
    enc = grit.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = grit.lm.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=grit.tokenizer.pad_token_id)
    return grit.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_greedy_equals_plain_transformers(tiny_grit):
    assert tiny_grit.generate(PROMPT, max_new_tokens=12) == plain_greedy(tiny_grit, PROMPT, 12)


def test_stream_concatenates_to_the_full_answer(tiny_grit):
    pieces = list(tiny_grit.chat(PROMPT, max_new_tokens=12, temperature=0.8, seed=3))
    assert "".join(pieces) == tiny_grit.generate(PROMPT, max_new_tokens=12, temperature=0.8, seed=3)
    assert tiny_grit.chat(PROMPT, stream=False, max_new_tokens=12) == tiny_grit.generate(PROMPT, max_new_tokens=12)


def test_sampling_is_seeded(tiny_grit):
    a = tiny_grit.generate(PROMPT, max_new_tokens=10, temperature=1.0, seed=1)
    b = tiny_grit.generate(PROMPT, max_new_tokens=10, temperature=1.0, seed=1)
    c = tiny_grit.generate(PROMPT, max_new_tokens=10, temperature=1.0, seed=2)
    assert a == b and a != c


def test_stop_strings_cut_the_text_in_both_paths(tiny_grit):
    full = tiny_grit.generate(PROMPT, max_new_tokens=20, temperature=1.0, seed=5)
    stop = full[6:9]  # a piece from the middle of the answer
    expected = full[: full.find(stop)]
    assert tiny_grit.generate(PROMPT, max_new_tokens=20, temperature=1.0, seed=5, stop=stop) == expected
    streamed = "".join(tiny_grit.chat(PROMPT, max_new_tokens=20, temperature=1.0, seed=5, stop=[stop, "\x00"]))
    assert streamed == expected


def test_closing_the_stream_stops_generation(tiny_grit):
    cancel = threading.Event()
    stream = tiny_grit.chat(PROMPT, max_new_tokens=200, temperature=1.0, seed=0, cancel=cancel)
    next(stream)
    stream.close()
    assert cancel.is_set()


def test_messages_and_grit_format(tiny_model_path):
    from grit import GritModel, PromptFormat

    grit = GritModel.load(tiny_model_path, dtype="float32", format=PromptFormat(chat="grit"))
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "?"},
    ]
    assert isinstance(grit.generate(msgs, max_new_tokens=3), str)


def test_bad_generation_settings(tiny_grit):
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_grit.generate(PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        tiny_grit.generate(PROMPT, top_p=0)
    with pytest.raises(ValueError, match="exceeds the model's context of 512"):
        tiny_grit.generate("word " * 600, max_new_tokens=8)
    with pytest.raises(TypeError, match="stop must be"):
        tiny_grit.generate(PROMPT, stop=[1])


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"max_new_tokens": 2.5}, TypeError, "max_new_tokens must be a whole number, got 2.5"),
        ({"max_new_tokens": True}, TypeError, "max_new_tokens must be a whole number, got True"),
        ({"temperature": float("nan")}, ValueError, "temperature must be a finite number, got nan"),
        ({"top_p": float("inf")}, ValueError, "top_p must be a finite number, got inf"),
        ({"temperature": "0.5"}, TypeError, "temperature must be a number"),
        ({"seed": 2**64}, ValueError, r"seed must be in \[-9223372036854775808, 18446744073709551615\]"),
        ({"seed": 1.5}, TypeError, "seed must be a whole number or None"),
    ],
)
def test_sampling_values_of_the_wrong_type_or_not_finite_are_refused(tiny_grit, settings, error, message):
    with pytest.raises(error, match=message):
        tiny_grit.generate(PROMPT, **settings)


PROMPTS = [PROMPT, "Hi", "Write a long and careful story about three cats, a dog and the sea.", "2+2?", "Why?"]


def test_batched_greedy_equals_one_at_a_time(tiny_grit):
    # Five prompts of different lengths in batches of two and three: rows are left-padded by different amounts.
    one_by_one = [tiny_grit.generate(p, max_new_tokens=10) for p in PROMPTS]
    assert tiny_grit.generate_batch(PROMPTS, max_new_tokens=10, batch_size=3) == one_by_one
    assert tiny_grit.generate_batch(PROMPTS, max_new_tokens=10, batch_size=2) == one_by_one
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[:2]]
    assert tiny_grit.generate_batch(chats, max_new_tokens=10) == one_by_one[:2]


def test_batched_stop_strings_and_bad_prompts(tiny_grit):
    full = tiny_grit.generate(PROMPT, max_new_tokens=20)
    stop = full[6:9]
    texts = tiny_grit.generate_batch([PROMPT, "Hi"], max_new_tokens=20, stop=stop, batch_size=2)
    assert stop not in texts[0] and full.startswith(texts[0]) and len(texts[0]) < len(full)
    assert texts == [tiny_grit.generate(p, max_new_tokens=20, stop=stop) for p in (PROMPT, "Hi")]
    with pytest.raises(ValueError, match="prompt 1: .*exceeds the model's context"):
        tiny_grit.generate_batch(["Hi", "word " * 600], max_new_tokens=8)
    with pytest.raises(ValueError, match="batch_size"):
        tiny_grit.generate_batch(["Hi"], batch_size=0)


def test_batched_generation_offers_the_gate_and_stops_on_cancel(tiny_grit):
    from contextlib import nullcontext

    from grit.generation import SamplingParams, complete_batch

    cancel = threading.Event()

    class CountingGate:  # what grit.serve's FairGate offers: the model between tokens; cancels after 3 tokens
        held = offered = 0

        def hold(self):
            self.held += 1
            return nullcontext()

        def run(self, fn, *args, **kwargs):
            return fn(*args, **kwargs)

        def between_tokens(self):
            self.offered += 1
            if self.offered == 3:
                cancel.set()

    ids = [tiny_grit.prompt_ids(p, 16) for p in PROMPTS[:4]]
    gate = CountingGate()
    done = complete_batch(tiny_grit.lm, tiny_grit.tokenizer, ids, SamplingParams(16), 2, cancel, gate)
    assert gate.held == 1  # the second batch never started
    first = [g for g in done if g.completion_tokens > 0]
    assert len(first) == 2 and all(g.finish_reason == "cancelled" and g.completion_tokens < 16 for g in first)
    skipped = [g for g in done if g.completion_tokens == 0]
    assert len(skipped) == 2 and all(g.finish_reason == "cancelled" and g.text == "" for g in skipped)


def test_a_finished_row_drops_the_padding_after_its_end():
    from grit.generation import own_tokens

    ends, pad = {2}, 0
    assert own_tokens(torch.tensor([5, 7, 2, 0, 0]), ends, pad).tolist() == [5, 7, 2]  # ended at the end token
    assert own_tokens(torch.tensor([5, 7, 9, 0, 0]), ends, pad).tolist() == [5, 7, 9]  # ended at a stop string
    assert own_tokens(torch.tensor([5, 7, 9]), ends, pad).tolist() == [5, 7, 9]  # ran to max_new_tokens
    assert own_tokens(torch.tensor([5, 2, 0]), {2}, 2).tolist() == [5, 2]  # pad is the end token


def test_length_groups_keep_long_prompts_apart():
    from grit.generation import length_groups

    lengths = [40, 1350, 48, 41, 60, 46, 43, 50]
    groups = length_groups(lengths, batch_size=4)
    assert sorted(i for g in groups for i in g) == list(range(8))  # every prompt once
    assert all(len(g) <= 4 for g in groups)
    assert [1] in groups  # the long one alone
    assert groups[0] == [0, 3, 6, 5]  # shortest first, in order of length
    assert length_groups([10, 10, 10], batch_size=1) == [[0], [1], [2]]


def test_a_long_prompt_is_prefilled_in_chunks_that_offer_the_model(tiny_grit, monkeypatch):
    """Chunked prefill gives the greedy answer of one pass, and offers the gate between chunks (so a long prompt
    does not hold the model for its whole prefill)."""
    from grit.serve.scheduler import FairGate

    ids = tiny_grit.prompt_ids("word " * 150, 8)  # ~150 tokens: several chunks of 32
    params = SamplingParams(8)
    whole = generation.complete(tiny_grit.lm, tiny_grit.tokenizer, ids, params)
    offered = []
    gate = FairGate()
    monkeypatch.setattr(gate, "between_tokens", lambda: offered.append(1))
    monkeypatch.setattr(generation, "PREFILL_CHUNK", 32)
    chunked = generation.complete(tiny_grit.lm, tiny_grit.tokenizer, ids, params, gate=gate)
    assert chunked.text == whole.text and chunked.completion_tokens == whole.completion_tokens
    chunks = -(-(ids.shape[1] - 1) // 32)
    assert len(offered) >= chunks  # one offer per prefill chunk, then one per generated token


def test_chunked_prefill_gives_the_logits_of_one_pass(tiny_grit, monkeypatch):
    from grit.transformers_compat import cache_argument

    monkeypatch.setattr(generation, "PREFILL_CHUNK", 16)
    ids = tiny_grit.prompt_ids("The logging module defines functions and classes. " * 6, 1)
    with torch.inference_mode():
        cache = generation.prefill(tiny_grit.lm, ids, None, None)
        assert cache.get_seq_length() == ids.shape[1] - 1
        last = tiny_grit.lm(input_ids=ids[:, -1:], position_ids=torch.tensor([[ids.shape[1] - 1]]),
                            **cache_argument(cache)).logits[0, -1]  # fmt: skip
        fresh = tiny_grit.lm(input_ids=ids).logits[0, -1]
    assert (last - fresh).abs().max() < 1e-4


def test_one_sampling_params_with_overrides(tiny_grit):
    params = SamplingParams(max_new_tokens=6, temperature=0.9, seed=4)
    assert tiny_grit.generate(PROMPT, params) == tiny_grit.generate(PROMPT, max_new_tokens=6, temperature=0.9, seed=4)
    assert tiny_grit.generate(PROMPT, params, temperature=0.0) == tiny_grit.generate(PROMPT, max_new_tokens=6)
    assert tiny_grit.generate_batch([PROMPT], params) == [tiny_grit.generate(PROMPT, params)]
    assert "".join(tiny_grit.chat(PROMPT, params)) == tiny_grit.generate(PROMPT, params)
    with pytest.raises(TypeError, match="unknown sampling option 'max_tokens'; the options are max_new_tokens"):
        tiny_grit.generate(PROMPT, max_tokens=5)
    with pytest.raises(TypeError, match="params must be a grit.generation.SamplingParams"):
        tiny_grit.generate(PROMPT, 32)
