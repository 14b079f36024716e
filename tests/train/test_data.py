"""Readers of GritLM JSON lines, hard-negative sampling, and the deterministic, resumable batch sampler."""

import gzip
import json
import logging
import random
from collections import Counter

import pytest
from conftest import SHARED_DATA

from grit.train.data import (
    BatchSampler,
    DataFormatError,
    Dataset,
    EmbeddingExample,
    add_default_instructions,
    apportion,
    drop_short_answers,
    embedding_group,
    embedding_groups,
    example_rng,
    parse_embedding,
    read_dataset,
    read_embedding_files,
    read_generative_files,
)


def write_jsonl(path, rows):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


EMBEDDING_ROWS = [
    {"query": "a cat", "pos": ["a kitten"], "neg": ["a car"]},
    {"query": ["Retrieve a passage: ", "who wrote it"], "pos": [["Represent the passage", "Jane wrote it"]]},
    {"query": "dogs", "pos": ["puppies", "hounds"], "neg": [], "source": "ignored"},
    {"id": "q1", "question": "Who wrote it?", "answers": ["Jane"], "passage": "Jane wrote it in 1990.", "title": ""},
    {"text": "my card has not come", "label": "card_arrival"},
    {"text": "a fine film", "label": 1},
]


@pytest.mark.parametrize("name", ["emb.jsonl", "emb.jsonl.gz"])
def test_read_embedding_file(tmp_path, name):
    (ds,) = read_embedding_files([write_jsonl(tmp_path / name, EMBEDDING_ROWS)])
    assert len(ds) == 6 and ds.skipped == 0
    assert ds.examples[0] == EmbeddingExample(("", "a cat"), [("", "a kitten")], [("", "a car")])
    # The instruction loses its trailing ": " as in GritLM; the text is kept as is.
    assert ds.examples[1].query == ("Retrieve a passage", "who wrote it")
    assert ds.examples[1].pos == [("Represent the passage", "Jane wrote it")] and ds.examples[1].neg == []
    assert len(ds.examples[2].pos) == 2
    # A passage-QA row (grit's RAG files) is a question and its passage: a query and its positive.
    assert ds.examples[3] == EmbeddingExample(("", "Who wrote it?"), [("", "Jane wrote it in 1990.")])
    # A classification row (grit's eval files) is a text and its label, as words: a query and its positive.
    assert ds.examples[4] == EmbeddingExample(("", "my card has not come"), [("", "card arrival")])
    assert ds.examples[5].pos == [("", "1")]


@pytest.mark.parametrize("label, match", [(None, "string or an integer"), (True, "string or an integer"),
                                          (["a"], "string or an integer"), ("_ ", "label is empty")])  # fmt: skip
def test_a_classification_row_needs_a_usable_label(tmp_path, label, match):
    path = write_jsonl(tmp_path / "cls.jsonl", [{"text": "fine", "label": "ok"}, {"text": "x", "label": label}])
    with pytest.raises(DataFormatError, match=f"cls.jsonl:2.*{match}"):
        read_embedding_files([path])


def test_read_generative_file(tmp_path):
    rows = [
        {"text": ["What is 2+2?", " 4\n"]},
        {"text": ["Hi", "Hello", "Bye", "See you"]},
        {"text": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello"}]},
        {"text": "Just some text to continue."},
    ]  # fmt: skip
    (ds,) = read_generative_files([write_jsonl(tmp_path / "gen.jsonl", rows)])
    first, multi, system, plain = (ex.conversation for ex in ds.examples)
    assert first == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    assert [m["role"] for m in multi] == ["user", "assistant", "user", "assistant"]
    assert system[0] == {"role": "system", "content": "Be brief."}
    assert plain == "Just some text to continue."


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "q", "pos": ["p"]', "Expecting"),  # invalid JSON
        ('{"pos": ["p"]}', "missing key 'query'"),
        ('{"query": "q", "pos": []}', "pos is empty"),
        ('{"query": "q", "pos": "p"}', "pos must be a list"),
        ('{"query": ["i", "t", "x"], "pos": ["p"]}', r"query must be a string or \[instruction, text\]"),
        ('{"query": ["instr", "  "], "pos": ["p"]}', "query has an empty text"),
        ('{"query": "q", "pos": ["p"], "neg": [3]}', r"neg\[0\] must be"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_embedding_line_names_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [EMBEDDING_ROWS[0], "", line])  # blank line 2 is skipped quietly
    with pytest.raises(DataFormatError, match=message) as info:
        read_embedding_files([path])
    assert str(info.value).startswith(f"{path}:3: ")
    assert info.value.line == 3 and info.value.path == path


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": ["q", "a", "q2"]}, "3 turns"),
        ({"text": ["q", "   "]}, "assistant turn is empty"),
        ({"text": [{"role": "user", "content": "q"}]}, "no assistant turn"),
        ({"text": [{"role": "bot", "content": "q"}]}, "role 'bot'"),
        ({"text": ["q", {"role": "assistant", "content": "a"}]}, "all strings or all messages"),
        ({"text": 5}, "must be a string or a non-empty list"),
        ({"prompt": "q"}, 'key "text"'),
    ],
)
def test_malformed_generative_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl.gz", [{"text": ["q", "a"]}, row])
    with pytest.raises(DataFormatError, match=message) as info:
        read_generative_files([path])
    assert info.value.line == 2


def test_invalid_utf8_is_a_format_error(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"bytes.jsonl:2: not UTF-8 text"):
        read_generative_files([path])


def test_skip_bad_lines_counts_and_warns(tmp_path, caplog):
    rows = [EMBEDDING_ROWS[0], "not json", {"query": "q"}, EMBEDDING_ROWS[2]]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="grit.train.data"):
        (ds,) = read_embedding_files([path], skip_bad_lines=True)
    assert len(ds) == 2 and ds.skipped == 2
    assert "skipped 2 malformed of 4 lines" in caplog.text and "mixed.jsonl:2:" in caplog.text


def test_file_without_valid_examples_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", ["", "oops"])
    with pytest.raises(DataFormatError, match="no valid examples"):
        read_embedding_files([path], skip_bad_lines=True)


def test_file_name_and_existence_are_checked(tmp_path):
    with pytest.raises(ValueError, match=".jsonl or .jsonl.gz"):
        read_dataset(tmp_path / "data.json", parse_embedding)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_dataset(tmp_path / "missing.jsonl", parse_embedding)


# --- hard negatives ----------------------------------------------------------------------------------------------


def dataset(n_examples: int, n_neg: int) -> Dataset:
    examples = [
        EmbeddingExample(("", f"q{i}"), [("", f"p{i}")], [("", f"n{i}.{k}") for k in range(n_neg)])
        for i in range(n_examples)
    ]
    return Dataset("mem.jsonl", examples)


def test_enough_negatives_are_sampled_from_the_example():
    group = embedding_group(dataset(5, 4), 2, 3, random.Random(0))
    assert group.query == ("", "q2") and group.passages[0] == ("", "p2")
    negatives = [text for _, text in group.passages[1:]]
    assert len(set(negatives)) == 3 and all(n.startswith("n2.") for n in negatives)


def test_missing_negatives_come_from_other_examples_of_the_data_set():
    ds = dataset(6, 1)
    group = embedding_group(ds, 4, 5, random.Random(0))
    texts = [text for _, text in group.passages]
    assert texts[:2] == ["p4", "n4.0"]  # positive, then the example's own negative
    assert len(texts) == 6
    assert all(not t.endswith("4") and "4." not in t for t in texts[2:])  # never the query's own passages


def test_files_without_negatives_can_train_on_in_batch_negatives_alone():
    from grit.train.data import Batch, embedding_groups

    with_negatives, without = dataset(4, 1), dataset(4, 0)
    batch = Batch(0, 0, ((0, 0), (0, 1), (1, 2), (1, 3)))
    filled = embedding_groups([with_negatives, without], batch, 1, seed=0)
    assert [len(g.passages) for g in filled] == [2, 2, 2, 2]  # a passage of another row stands in
    own = embedding_groups([with_negatives, without], batch, 1, seed=0, from_other_rows=False)
    assert [len(g.passages) for g in own] == [2, 2, 1, 1] and own[:2] == filled[:2]


def test_single_example_repeats_its_negatives_or_fails():
    group = embedding_group(dataset(1, 2), 0, 3, random.Random(0))
    assert Counter(t for _, t in group.passages[1:]) == Counter({"n0.0": 2, "n0.1": 1})
    with pytest.raises(ValueError, match="no negatives"):
        embedding_group(dataset(1, 0), 0, 1, random.Random(0))


def test_groups_are_reproducible_from_seed_and_epoch():
    ds = [dataset(20, 0), dataset(20, 3)]
    batch = next(BatchSampler([20, 20], batch_size=4, seed=1))
    assert embedding_groups(ds, batch, 2, seed=7) == embedding_groups(ds, batch, 2, seed=7)
    d, i = batch.items[0]
    assert embedding_groups(ds, batch, 2, seed=7)[0] == embedding_group(ds[d], i, 2, example_rng(7, 0, d, i))


# --- sampler -----------------------------------------------------------------------------------------------------


def take(sampler, n):
    return [next(sampler) for _ in range(n)]


def test_sampler_batches_come_from_one_data_set_and_cover_each_once():
    sampler = BatchSampler([10, 7, 3], batch_size=3, seed=0)
    assert len(sampler) == 3 + 2 + 1
    epoch = take(sampler, len(sampler))
    assert all(b.epoch == 0 for b in epoch) and [b.step for b in epoch] == list(range(6))
    assert all(len({d for d, _ in b.items}) == 1 and len(b.items) == 3 for b in epoch)
    seen = [item for b in epoch for item in b.items]
    assert len(seen) == len(set(seen)) == 18
    assert Counter(d for d, _ in seen) == {0: 9, 1: 6, 2: 3}  # remainders (1 of set 0, 1 of set 1) dropped
    assert next(sampler).epoch == 1


def test_sampler_is_deterministic_and_reshuffles_each_epoch():
    a = take(BatchSampler([50, 30], 4, seed=3), 40)
    b = take(BatchSampler([50, 30], 4, seed=3), 40)
    c = take(BatchSampler([50, 30], 4, seed=4), 40)
    assert a == b and a != c
    n = len(BatchSampler([50, 30], 4))
    assert [x.items for x in a[:n]] != [x.items for x in a[n : 2 * n]]


@pytest.mark.parametrize("stop", [0, 5, 18, 19, 20, 45])  # 19 batches per epoch: around the epoch boundary too
def test_sampler_resumes_exactly(stop):
    sampler = BatchSampler([50, 30], 4, seed=3)
    take(sampler, stop)
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a JSON checkpoint
    expected = take(sampler, 25)
    resumed = BatchSampler([50, 30], 4, seed=3)
    resumed.load_state_dict(state)
    assert take(resumed, 25) == expected


def test_sampler_state_must_match_the_data():
    state = BatchSampler([50, 30], 4, seed=3).state_dict()
    with pytest.raises(ValueError, match="sizes"):
        BatchSampler([50, 31], 4, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        BatchSampler([50, 30], 4, seed=0).load_state_dict(state)


@pytest.mark.parametrize("weights", [[1, 1, 1], [1, 3, 0.5], [10, 1, 1]])
def test_weighted_sampler_gives_each_data_set_its_share_of_batches(weights):
    sizes, bs = [60, 12, 30], 4  # set 1 (3 batches a round) must go round again when weighted up
    sampler = BatchSampler(sizes, bs, seed=2, weights=weights)
    epoch = take(sampler, len(sampler))
    assert len(sampler) == 15 + 3 + 7  # an epoch keeps its unweighted length
    counts = Counter(b.items[0][0] for b in epoch)
    assert [counts[d] for d in range(3)] == apportion(len(sampler), weights)
    for b in epoch:
        assert len({d for d, _ in b.items}) == 1 and len(set(b.items)) == bs  # one set, no example twice
    assert all(abs(counts[d] - len(sampler) * w / sum(weights)) < 1 for d, w in enumerate(weights))


def test_weighted_sampler_upsamples_a_small_set_in_fresh_orders_and_skips_one_too_small():
    sampler = BatchSampler([8, 40, 3], 4, seed=0, weights=[4, 1, 9])  # set 2 (3 < batch of 4) is never drawn
    epoch = [b.items for b in take(sampler, len(sampler))]
    small = [items for items in epoch if items[0][0] == 0]
    assert len(sampler) == 12 and len(small) == apportion(12, [4, 1, 0])[0] == 10  # 5 rounds of set 0's 2 batches
    assert Counter(item for items in small for item in items) == {(0, i): 5 for i in range(8)}
    assert not any(items[0][0] == 2 for items in epoch)


def test_weighted_pooled_sampler_draws_examples_by_weight():
    sampler = BatchSampler([100, 10], 5, seed=1, same_dataset=False, weights=[1, 1])
    seen = Counter(d for b in take(sampler, len(sampler)) for d, _ in b.items)
    assert seen == {0: 55, 1: 55}


@pytest.mark.parametrize("stop", [0, 7, 24, 25, 26, 60])  # 25 batches per epoch
def test_weighted_sampler_resumes_exactly_and_keeps_its_weights(stop):
    sampler = BatchSampler([60, 12, 30], 4, seed=3, weights=[1, 3, 1])
    take(sampler, stop)
    state = json.loads(json.dumps(sampler.state_dict()))
    expected = take(sampler, 30)
    resumed = BatchSampler([60, 12, 30], 4, seed=3, weights=[1, 3, 1])
    resumed.load_state_dict(state)
    assert take(resumed, 30) == expected
    with pytest.raises(ValueError, match="weights"):
        BatchSampler([60, 12, 30], 4, seed=3).load_state_dict(state)


def test_an_unweighted_state_from_before_weights_still_loads():
    state = BatchSampler([50, 30], 4, seed=3).state_dict()
    del state["weights"]
    BatchSampler([50, 30], 4, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="weights"):
        BatchSampler([50, 30], 4, seed=3, weights=[1, 1]).load_state_dict(state)


@pytest.mark.parametrize("weights, match", [([1], "2 data sets"), ([1, 0], "> 0"), ([1, float("nan")], "> 0")])
def test_sampler_refuses_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        BatchSampler([50, 30], 4, weights=weights)


def test_apportion_splits_a_total_exactly():
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7, [1, 0, 2]) == [2, 0, 5]
    assert sum(apportion(1001, [0.3, 1.7, 5.0])) == 1001
    with pytest.raises(ValueError, match="every weight is zero"):
        apportion(5, [0, 0])


def test_mixed_sampler_pools_all_data_sets():
    sampler = BatchSampler([5, 6], batch_size=4, seed=0, same_dataset=False)
    assert len(sampler) == 2
    items = [item for b in take(sampler, 2) for item in b.items]
    assert len(set(items)) == 8


def test_sampler_arguments_are_checked(caplog):
    with pytest.raises(ValueError, match="no full batch"):
        BatchSampler([3, 2], batch_size=4)
    with caplog.at_level(logging.WARNING):
        BatchSampler([8, 2], batch_size=4)
    assert "never drawn" in caplog.text
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler([8], batch_size=0)


# --- the real training files -------------------------------------------------------------------------------------


def count_empty_targets(path) -> int:
    with gzip.open(path, "rt") if path.name.endswith(".gz") else path.open() as f:
        return sum(not json.loads(line)["text"][-1].strip() for line in f)


@pytest.mark.skipif(
    not (SHARED_DATA / "contrastive/nli_triplets.jsonl").is_file(), reason="shared data sets are not present"
)
def test_real_training_files_read():
    (nli,) = read_embedding_files([SHARED_DATA / "contrastive/nli_triplets.jsonl"])
    assert len(nli) == 5875 and nli.skipped == 0
    assert all(len(ex.pos) == 1 and len(ex.neg) == 1 for ex in nli.examples)
    paths = sorted((SHARED_DATA / "generative").glob("*.jsonl*"))
    assert len(paths) >= 2
    # Some P3 templates (trec_*) lost their targets upstream; an empty answer would only teach the model to stop at
    # once, so those lines are malformed, and skip_bad_lines skips exactly them.
    for ds, path in zip(read_generative_files(paths, skip_bad_lines=True), paths, strict=True):
        assert ds.skipped == count_empty_targets(path)
        assert len(ds) > 5000


def test_default_instructions_fill_only_texts_without_one(tmp_path):
    rows = [
        {"query": "a premise", "pos": ["an entailment"], "neg": ["a contradiction"]},
        {"query": ["Own instruction: ", "q"], "pos": [["Doc instruction", "p"]]},
    ]
    (tmp_path / "nli.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    [dataset] = read_embedding_files([tmp_path / "nli.jsonl"])
    add_default_instructions([dataset], "Given a premise, retrieve its entailment: ", "")
    first, second = dataset.examples
    assert first.query == ("Given a premise, retrieve its entailment", "a premise")
    assert first.pos == [("", "an entailment")] and first.neg == [("", "a contradiction")]
    assert second.query == ("Own instruction", "q") and second.pos == [("Doc instruction", "p")]


def test_drop_short_answers_keeps_chats_with_one_long_enough_answer(tmp_path):
    rows = [
        {"text": ["Is this review positive?", "yes"]},
        {"text": ["Summarize.", "The council voted to close the old bridge."]},
        {"text": ["Hi", "Hello", "And the summary?", "It rained all day in the town."]},
        {"text": "a plain text row of seven words here"},
    ]
    [dataset] = read_generative_files([write_jsonl(tmp_path / "mix.jsonl", rows)])
    drop_short_answers([dataset], 5)
    kept = [
        ex.conversation if isinstance(ex.conversation, str) else ex.conversation[-1]["content"]
        for ex in dataset.examples
    ]
    assert kept == [
        "The council voted to close the old bridge.",
        "It rained all day in the town.",
        "a plain text row of seven words here",
    ]
    drop_short_answers([dataset], 0)  # 0 turns the filter off
    assert len(dataset) == 3


def test_drop_short_answers_names_a_file_left_empty(tmp_path):
    [dataset] = read_generative_files([write_jsonl(tmp_path / "labels.jsonl", [{"text": ["Sentiment?", "positive"]}])])
    with pytest.raises(DataFormatError, match=r"labels.jsonl.*no chat with an answer of 3 words"):
        drop_short_answers([dataset], 3)
