import threading

import pytest
import torch

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
