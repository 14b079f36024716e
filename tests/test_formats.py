import pytest

from grit.formats import PromptFormat, as_messages


def test_embed_prefix_as_gritlm():
    fmt = PromptFormat()
    assert fmt.embed_prefix("Find similar sentences") == "<|user|>\nFind similar sentences\n<|embed|>\n"
    assert fmt.embed_prefix("") == "<|embed|>\n"


def test_grit_chat_format_multi_turn_with_system():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert PromptFormat().grit_chat(msgs) == (
        "<|user|>\nBe brief.\nHi\n<|assistant|>\nHello</s><|user|>\nBye\n<|assistant|>\n"
    )


def test_format_is_validated():
    with pytest.raises(ValueError, match="instruction"):
        PromptFormat(embed_with_instruction="no placeholder")
    with pytest.raises(ValueError, match="chat must be"):
        PromptFormat(chat="jinja")


def test_messages_are_checked():
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="message 0 has role 'bot'"):
        as_messages([{"role": "bot", "content": "x"}])
    with pytest.raises(TypeError, match="message 1"):
        as_messages([{"role": "user", "content": "x"}, "oops"])
    with pytest.raises(TypeError, match="non-empty list"):
        as_messages([])
