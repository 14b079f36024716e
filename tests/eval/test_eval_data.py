"""Readers of the shared data formats: good rows parse, a bad row names its file and line."""

from __future__ import annotations

import gzip
import json

import pytest

from grit.eval import data
from grit.eval.data import DataFormatError
from grit.splits import is_held_out


def write(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_read_sts_and_classification(tmp_path):
    sts = write(tmp_path / "sts.jsonl", ['{"sentence1": "a", "sentence2": "b", "score": 4, "genre": "x"}', ""])
    assert data.read_sts(sts) == [data.StsPair("a", "b", 4.0)]
    cls = write(tmp_path / "cls.jsonl", ['{"text": "hi", "label": "greet"}', '{"text": "yo", "label": 1}'])
    assert [x.label for x in data.read_classification(cls)] == ["greet", "1"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"sentence1": "a", "sentence2": "b"', "not valid JSON"),
        ('["a", "b", 1]', "expected a JSON object"),
        ('{"sentence1": "a", "sentence2": "b"}', "missing field 'score'"),
        ('{"sentence1": "a", "sentence2": "b", "score": "high"}', "'score' must be int or float, got str"),
        ('{"sentence1": "", "sentence2": "b", "score": 1}', "'sentence1' is empty"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    good = '{"sentence1": "a", "sentence2": "b", "score": 1.5}'
    path = write(tmp_path / "bad.jsonl", [good, good, line])
    with pytest.raises(DataFormatError, match=message) as err:
        data.read_sts(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert (err.value.path, err.value.line) == (path, 3)
    assert isinstance(err.value, ValueError)


def test_gzipped_generative(tmp_path):
    path = tmp_path / "gen.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"text": ["q1", "a1", "q2", ""], "source": "s"}) + "\n")
    (conv,) = data.read_generative(path)
    assert conv.turns == ("q1", "a1", "q2", "")  # empty turns are the tasks' business
    assert conv.messages(upto=3) == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    bad = tmp_path / "bad.jsonl"
    write(bad, ['{"text": ["q", "a"]}', '{"text": ["only a question"]}'])
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: field 'text' must be a list of >= 2"):
        data.read_generative(bad)
    write(bad, ['{"text": ["q", "a", "q2"]}'])
    with pytest.raises(DataFormatError, match="3 turns"):
        data.read_generative(bad)


def test_read_rag(tmp_path):
    row = {"id": "x/0", "question": "q?", "answers": ["2003"], "passage": "In 2003.", "title": ""}
    path = write(tmp_path / "rag.jsonl", [json.dumps(row), json.dumps({**row, "answers": []})])
    with pytest.raises(DataFormatError, match=r"rag.jsonl:2: field 'answers'"):
        data.read_rag(path)
    write(path, [json.dumps(row)])
    assert data.read_rag(path) == [data.QaExample("x/0", "q?", ("2003",), "In 2003.", "")]


def test_held_out_examples_match_the_split_of_the_raw_rows(tmp_path):
    # The split hashes the raw row's id; read_rag keeps it as a string, so int and str ids must fall alike.
    rows = [{"id": i if i % 2 else f"q{i}", "question": "q?", "answers": ["a"], "passage": "p"} for i in range(400)]
    path = write(tmp_path / "rag.jsonl", [json.dumps(r) for r in rows])
    held = {str(r["id"]) for r in rows if is_held_out(r)}
    assert 0 < len(held) < len(rows)
    assert {r.id for r in data.read_rag(path, heldout_only=True)} == held
    assert data.held_out_examples(data.read_rag(path)) == data.read_rag(path, heldout_only=True)


def test_read_beir(tmp_path):
    write(tmp_path / "corpus.jsonl", ['{"_id": "d1", "title": "T", "text": "body"}', '{"_id": 2, "text": "x"}'])
    write(tmp_path / "queries.jsonl", ['{"_id": "q1", "text": "what?"}'])
    (tmp_path / "qrels").mkdir()
    write(tmp_path / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q1\t2\t0"])
    ds = data.read_beir(tmp_path)
    assert ds.qrels == {"q1": {"d1": 2, "2": 0}}
    assert ds.doc_text("d1") == "T body" and ds.doc_text("2") == "x"
    write(tmp_path / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q1 d1 2"])
    with pytest.raises(DataFormatError, match=r"test.tsv:3: expected 3 tab-separated columns, got 1"):
        data.read_beir(tmp_path)
    write(tmp_path / "qrels" / "test.tsv", ["q1\td1\tvery"])
    with pytest.raises(DataFormatError, match=r"test.tsv:1: score must be an integer"):
        data.read_beir(tmp_path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.read_sts(tmp_path / "nope.jsonl")


def test_sample_is_seeded_and_keeps_file_order():
    rows = list(range(100))
    first = data.sample(rows, 10)
    assert first == data.sample(rows, 10) == sorted(first)
    assert data.sample(rows, None) == rows == data.sample(rows, 1000)
    assert first != rows[:10]  # random, not the head of a sorted file
