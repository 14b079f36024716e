"""Hostile input to the Python API: invalid Unicode, wrong types, huge and empty inputs. Each gets a clear exception
(TypeError or ValueError, naming the input) from grit itself, never one from deep inside transformers or the
tokenizers, and never a silent result."""

from __future__ import annotations

import pytest

from grit.rag import RAG, Document, Index, load_documents
from grit.train.data import DataFormatError, read_embedding_files, read_generative_files

S = "\ud800"  # a lone UTF-16 surrogate: a Python string, not valid Unicode


@pytest.fixture(scope="module")
def rag(tiny_grit):
    return RAG(tiny_grit, Index.build([Document("json", "The json module exposes an API.")], tiny_grit))


CASES = {
    # encode
    "encode: surrogate": (lambda m, r: m.encode(["ok", "a" + S]), ValueError, r"texts\[1\]: a lone UTF-16 surrogate"),
    "encode: instruction surrogate": (lambda m, r: m.encode("a", instruction=S), ValueError, "instruction: a lone"),
    "encode: bytes": (lambda m, r: m.encode([b"abc"]), TypeError, r"texts\[0\] must be a string, got bytes"),
    "encode: None": (lambda m, r: m.encode(None), TypeError, "texts must be a string"),
    "encode: nested list": (lambda m, r: m.encode([["a"]]), TypeError, r"texts\[0\] must be a string, got list"),
    "encode: whitespace": (lambda m, r: m.encode("\n\t "), ValueError, "whitespace only"),
    "encode: instruction int": (lambda m, r: m.encode("a", instruction=3), TypeError, "instruction must be a string"),
    "encode: max_length 0": (lambda m, r: m.encode("a", max_length=0), ValueError, "max_length"),
    # generate and chat
    "generate: surrogate": (lambda m, r: m.generate("hi" + S, max_new_tokens=2), ValueError, "prompt: a lone"),
    "generate: surrogate message": (
        lambda m, r: m.generate([{"role": "user", "content": S}], max_new_tokens=2),
        ValueError,
        "message 0 content: a lone",
    ),
    "generate: huge prompt": (
        lambda m, r: m.generate("word " * 50_000, max_new_tokens=2),
        ValueError,
        "exceeds the model's context",
    ),  # fmt: skip
    "generate: no messages": (lambda m, r: m.generate([], max_new_tokens=2), TypeError, "non-empty list of messages"),
    "generate: bad role": (lambda m, r: m.generate([{"role": "robot", "content": "x"}]), ValueError, "role 'robot'"),
    "generate: float tokens": (lambda m, r: m.generate("hi", max_new_tokens=3.0), TypeError, "whole number"),
    "generate: nan temperature": (lambda m, r: m.generate("hi", temperature=float("nan")), ValueError, "finite"),
    "generate_batch: surrogate": (
        lambda m, r: m.generate_batch(["ok", S], max_new_tokens=2),
        ValueError,
        "prompt 1: prompt: a lone",
    ),  # fmt: skip
    "chat: surrogate stop": (lambda m, r: list(m.chat("hi", stop=[3])), TypeError, "stop must be"),
    # RAG
    "rag: surrogate question": (lambda m, r: r.answer("q" + S, max_new_tokens=2), ValueError, "the question: a lone"),
    "rag: question not a string": (lambda m, r: r.answer(42), TypeError, "the question must be a string, got int"),
    "rag: k zero": (lambda m, r: r.answer("q", k=0), ValueError, "k must be >= 1"),
    "rag: unknown mode": (lambda m, r: r.answer("q", cache="all"), ValueError, "unknown cache mode"),
    # the index
    "index: surrogate text": (
        lambda m, r: Index.build([Document("d", "x" + S)], m),
        ValueError,
        "document 'd' text: a lone",
    ),  # fmt: skip
    "index: surrogate id": (lambda m, r: Index.build([Document("d" + S, "x")], m), ValueError, "id: a lone"),
    "index: text None": (lambda m, r: Index.build([Document("d", None)], m), TypeError, "text must be a string"),
    "index: duplicate ids": (
        lambda m, r: Index.build([Document("d", "a"), Document("d", "b")], m),
        ValueError,
        "appears more than once",
    ),  # fmt: skip
    "search: k zero": (lambda m, r: r.index.search("q", k=0), ValueError, "k must be >= 1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_python_input_is_a_clear_error(tiny_grit, rag, case):
    call, error, message = CASES[case]
    with pytest.raises(error, match=message):
        call(tiny_grit, rag)


FILE_CASES = {
    "surrogate escape": ('{"query": "q\\ud800", "pos": ["p"]}', r":1: query: a lone UTF-16 surrogate"),
    "surrogate bytes": (b'{"query": "q\xed\xa0\x80", "pos": ["p"]}', ":1:"),
    "not an object": ("[1, 2]", ":1:"),
    "no pos": ('{"query": "q"}', ":1:"),
    "empty query": ('{"query": " ", "pos": ["p"]}', ":1:"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_training_rows_name_their_file_and_line(tmp_path, case):
    content, message = FILE_CASES[case]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataFormatError, match=message):
        read_embedding_files([path])


def test_a_generative_row_with_a_surrogate_names_its_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text('{"text": ["Say hi.", "Hi!"]}\n{"text": ["Say \\udc00.", "No."]}\n')
    with pytest.raises(DataFormatError, match=r"chat.jsonl:2: text\[0\]: a lone UTF-16 surrogate"):
        read_generative_files([path])


def test_a_document_file_with_a_surrogate_names_its_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "bad \\ud800"}\n')
    with pytest.raises(ValueError, match=r"docs.jsonl:2: text: a lone UTF-16 surrogate"):
        load_documents(path)
