"""Collation with the tiny model's real BPE tokenizer and its ChatML template."""

import pytest
import torch

from grit.embedding import tokenize
from grit.formats import PromptFormat
from grit.generation import chat_prompt
from grit.train.collate import (
    assistant_spans,
    collate_embedding,
    collate_generative,
    text_key,
    tokenize_conversation,
)
from grit.train.data import EmbeddingGroup, GenerativeExample

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does the module do?"},
    {"role": "assistant", "content": "It parses arguments."},
    {"role": "user", "content": "And the other one?"},
    {"role": "assistant", "content": "It writes logs."},
]
TEMPLATE, GRIT = PromptFormat(), PromptFormat(chat="grit")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def trained_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])


# --- embedding ---------------------------------------------------------------------------------------------------


def test_collate_embedding_shapes_and_text_masks(tokenizer):
    groups = [
        EmbeddingGroup(("Find the answer", "what does json do"), [("", "it encodes data"), ("", "a path")]),
        EmbeddingGroup(("", "logging"), [("Represent the passage", "logs events"), ("", "wraps text")]),
        EmbeddingGroup(("Find the answer", "pathlib"), [("", "paths as objects"), ("", "argument parsing")]),
    ]
    batch = collate_embedding(tokenizer, groups, TEMPLATE, query_max_length=48, passage_max_length=48)
    assert batch.group_size == 2 and batch.truncated == 0
    assert batch.query_ids.shape[0] == 3 and batch.passage_ids.shape[0] == 6
    for name in ("ids", "padding", "text"):
        assert getattr(batch, f"query_{name}").shape == batch.query_ids.shape
        assert getattr(batch, f"passage_{name}").shape == batch.passage_ids.shape
    # Row order is kept although texts are tokenized per instruction, and only the text tokens are pooled.
    texts = [g.query for g in groups]
    for row, (instruction, text) in enumerate(texts):
        expected = tokenize(tokenizer, [text], TEMPLATE.embed_prefix(instruction), 48)[0]
        n = len(expected.ids)
        assert batch.query_ids[row, :n].tolist() == expected.ids
        assert batch.query_text[row, :n].tolist() == expected.text_mask
        assert batch.query_padding[row].sum() == n
        pooled = batch.query_ids[row][batch.query_text[row].bool()].tolist()
        assert tokenizer.decode(pooled) == text
    assert tokenizer.decode(batch.passage_ids[2][batch.passage_text[2].bool()].tolist()) == "logs events"


def test_passage_keys_are_equal_exactly_for_equal_passages(tokenizer):
    groups = [
        EmbeddingGroup(("", "q0"), [("", "a shared passage"), ("", "a negative")]),
        EmbeddingGroup(("", "q1"), [("", "a shared passage"), ("Represent it", "a shared passage")]),
    ]
    keys = collate_embedding(tokenizer, groups, TEMPLATE, 48, 48).passage_keys.tolist()
    assert keys[0] == keys[2] and len({keys[0], keys[1], keys[3]}) == 3  # the instruction is part of the passage
    # Fixed by the text alone (blake2b), not by Python's per-process str hash: processes compare each other's.
    assert text_key(("", "a shared passage")) == text_key(("", "a shared passage")) == keys[0]
    assert text_key(("", "x")) == 2812061760185643760


def test_collate_embedding_cuts_and_counts(tokenizer):
    long = "the quick brown fox jumps over the lazy dog " * 10
    groups = [
        EmbeddingGroup(("", "short"), [("", long), ("", "x")]),
        EmbeddingGroup(("", long), [("", "a"), ("", "b")]),
    ]
    batch = collate_embedding(tokenizer, groups, TEMPLATE, query_max_length=12, passage_max_length=10)
    assert batch.query_ids.shape[1] == 12 and batch.passage_ids.shape[1] == 10
    assert batch.truncated == 2


def test_collate_embedding_rejects_ragged_groups_and_long_instructions(tokenizer):
    with pytest.raises(ValueError, match="passages"):
        collate_embedding(tokenizer, [EmbeddingGroup(("", "q"), [("", "p")]),
                                      EmbeddingGroup(("", "q"), [("", "p"), ("", "n")])], TEMPLATE, 8, 8)  # fmt: skip
    with pytest.raises(ValueError, match="instruction 'Find"):
        collate_embedding(tokenizer, [EmbeddingGroup(("Find " * 20, "q"), [("", "p")])], TEMPLATE, 8, 8)


# --- generation: which tokens carry loss -------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "end"), [(TEMPLATE, "<|im_end|>"), (GRIT, "<|im_end|>")])
def test_only_assistant_turns_and_their_end_marker_are_trained(tokenizer, fmt, end):
    ids, labels, cut = tokenize_conversation(tokenizer, CHAT, fmt, max_length=512)
    assert not cut
    assert trained_text(tokenizer, ids, labels) == f"It parses arguments.{end}It writes logs.{end}"
    assert all(lab in (-100, i) for i, lab in zip(ids, labels, strict=True))
    masked = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab == -100])
    for text in ("Be brief.", "What does the module do?", "And the other one?"):
        assert text in masked  # system prompt and user turns carry no loss


def test_chatml_end_of_turn_is_trained_although_it_is_the_pad_token(tokenizer):
    ids, labels, _ = tokenize_conversation(tokenizer, CHAT, TEMPLATE, max_length=512)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token_id == end
    assert tokenizer.decode(ids[-1:]) == "\n"
    assert labels[-1] == -100 and labels[-2] == end  # "<|im_end|>" trained, the template's "\n" after it not


@pytest.mark.parametrize("fmt", [TEMPLATE, GRIT])
def test_changing_a_user_turn_does_not_change_what_is_trained(tokenizer, fmt):
    other = [dict(m) for m in CHAT]
    other[1]["content"] = "A much longer and quite different question about the json module and its parser?"
    other[3]["content"] = "?"
    a_ids, a_labels, _ = tokenize_conversation(tokenizer, CHAT, fmt, 512)
    b_ids, b_labels, _ = tokenize_conversation(tokenizer, other, fmt, 512)
    assert len(a_ids) != len(b_ids)
    assert [x for x in a_labels if x != -100] == [x for x in b_labels if x != -100]


@pytest.mark.parametrize("fmt", [TEMPLATE, GRIT])
def test_training_tokens_start_with_the_inference_prompt_tokens(tokenizer, fmt):
    # The prompt the model gets at inference, tokenized alone, is the start of the training sequence, and the
    # first trained token comes right after it.
    ids, labels, _ = tokenize_conversation(tokenizer, CHAT, fmt, 512)
    for k in (2, 4):
        prompt = tokenizer(chat_prompt(tokenizer, CHAT[:k], fmt), add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt)] == prompt
        assert labels[len(prompt) - 1] == -100 and labels[len(prompt)] == ids[len(prompt)]


def test_assistant_spans_are_character_ranges(tokenizer):
    text, spans = assistant_spans(tokenizer, CHAT, GRIT)
    assert [text[a:b] for a, b in spans] == ["It parses arguments.<|im_end|>", "It writes logs.<|im_end|>"]


def test_a_template_that_rewrites_history_is_refused(tokenizer):
    # Like templates that drop earlier reasoning: an earlier assistant turn renders differently once it is not last.
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<|im_start|>assistant\n"
        "...<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="prefix of the whole conversation"):
        tokenize_conversation(tokenizer, CHAT, TEMPLATE, 512)


def test_plain_text_trains_every_token(tokenizer):
    ids, labels, _ = tokenize_conversation(tokenizer, "Some plain text to continue.", TEMPLATE, 512)
    assert labels == ids


# --- generation: batches -----------------------------------------------------------------------------------------


def test_collate_generative_pads_and_masks(tokenizer):
    examples = [
        GenerativeExample(CHAT),
        GenerativeExample([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
        GenerativeExample("plain text"),
    ]
    batch = collate_generative(tokenizer, examples, TEMPLATE, max_length=512)
    lengths = [len(tokenize_conversation(tokenizer, ex.conversation, TEMPLATE, 512)[0]) for ex in examples]
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (3, max(lengths))
    assert batch.attention_mask.sum(1).tolist() == lengths
    pad = batch.attention_mask == 0
    assert (batch.labels[pad] == -100).all() and (batch.input_ids[pad] == tokenizer.pad_token_id).all()
    assert trained_text(tokenizer, batch.input_ids[1].tolist(), batch.labels[1].tolist()) == "Hello<|im_end|>"
    assert batch.truncated == 0
    assert batch.to("cpu") is batch and batch.labels.dtype == torch.long


def test_collate_generative_cuts_and_counts(tokenizer):
    batch = collate_generative(tokenizer, [GenerativeExample(CHAT), GenerativeExample("short")], TEMPLATE, 20)
    assert batch.input_ids.shape[1] == 20 and batch.truncated == 1
