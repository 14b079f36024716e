"""The held-out split shared by training (data.exclude_heldout) and the evaluation tasks (heldout_only)."""

import json

import pytest

from grit.eval import data as eval_data
from grit.splits import HELDOUT_FRACTION, is_held_out, row_identity
from grit.train.data import parse_generative, read_dataset


def conversations(n: int) -> list[dict]:
    return [{"text": [f"question {i}?", f"answer {i}"]} for i in range(n)]


def test_fraction_is_close_to_the_constant():
    rows = conversations(5000)
    share = sum(map(is_held_out, rows)) / len(rows)
    assert abs(share - HELDOUT_FRACTION) < 0.02


def test_split_ignores_key_order_and_uses_id_when_present():
    a = {"text": ["q", "a"], "source": "x"}
    assert row_identity(a) == row_identity({"source": "x", "text": ["q", "a"]})
    qa = {"id": "42", "question": "q", "passage": "p", "answers": ["a"]}
    pair = {"id": "42", "query": "q", "pos": ["p"]}  # the same row rewritten as a contrastive pair
    assert row_identity(qa) == row_identity(pair) == "id:42"
    assert is_held_out(qa) == is_held_out(pair)


def test_fraction_bounds():
    row = {"text": ["q", "a"]}
    assert is_held_out(row, 1.0) and not is_held_out(row, 0.0)
    with pytest.raises(ValueError, match="fraction"):
        is_held_out(row, 1.5)


def test_training_keeps_exactly_the_rows_evaluation_does_not_score(tmp_path):
    rows = conversations(300)
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    train = read_dataset(path, parse_generative, exclude_heldout=True)
    scored = eval_data.read_generative(path, heldout_only=True)
    trained_questions = {ex.conversation[0]["content"] for ex in train.examples}
    scored_questions = {c.turns[0] for c in scored}

    assert trained_questions.isdisjoint(scored_questions)
    assert len(trained_questions) + len(scored_questions) == len(rows)
    assert train.held_out == len(scored) > 0
    assert len(read_dataset(path, parse_generative).examples) == len(rows)  # off by default
