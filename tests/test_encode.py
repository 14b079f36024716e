import logging

import numpy as np
import pytest
import torch

from grit.attention import hidden_states

TEXTS = [
    "The logging module defines functions and classes.",
    "json exposes an API familiar to users of marshal.",
    "A short one.",
    "Argument parsing: the argparse module makes it easy to write user-friendly command-line interfaces.",
]


def test_pooled_vector_is_mean_of_text_tokens_only(tiny_grit):
    """Instruction masking: recompute by hand which tokens are text and average their states."""
    instruction, text = "Retrieve the module", "json exposes an API"
    prefix = tiny_grit.format.embed_prefix(instruction)
    prefix_ids = tiny_grit.tokenizer(prefix)["input_ids"]
    ids = tiny_grit.tokenizer(prefix + text)["input_ids"]
    assert ids[: len(prefix_ids)] == prefix_ids  # the prefix ends in "\n", so tokenization does not merge across it
    with torch.no_grad():
        states = hidden_states(tiny_grit.lm.base_model, torch.tensor([ids]), torch.ones(1, len(ids)), True)[0]
    manual = states[len(prefix_ids) :].mean(0)
    manual = (manual / manual.norm()).numpy()
    ours = tiny_grit.encode(text, instruction=instruction)
    np.testing.assert_allclose(ours, manual, atol=1e-5)
    everything = states.mean(0)
    assert np.abs(ours - (everything / everything.norm()).numpy()).max() > 1e-3  # masking made a difference


def test_batch_invariance_and_order(tiny_grit):
    batched = tiny_grit.encode(TEXTS, instruction="Find similar", batch_size=3)
    for i, text in enumerate(TEXTS):
        alone = tiny_grit.encode([text], instruction="Find similar")[0]
        cos = float(alone @ batched[i])
        assert cos >= 0.9999, f"text {i}: cosine {cos}"


def test_shapes_dtype_and_normalization(tiny_grit):
    out = tiny_grit.encode(TEXTS)
    assert out.shape == (4, tiny_grit.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert tiny_grit.encode("one").shape == (tiny_grit.dim,)
    assert tiny_grit.encode([]).shape == (0, tiny_grit.dim)
    raw = tiny_grit.encode(TEXTS, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_instruction_changes_embedding(tiny_grit):
    a = tiny_grit.encode("json exposes an API", instruction="Retrieve code")
    b = tiny_grit.encode("json exposes an API", instruction="Classify the sentiment")
    assert float(a @ b) < 0.99999


def test_poolings_differ(tiny_grit):
    vectors = {p: tiny_grit.encode(TEXTS[0], pooling=p) for p in ("mean", "weighted_mean", "last", "cls")}
    assert len({v.tobytes() for v in vectors.values()}) == 4
    with pytest.raises(ValueError, match="unknown pooling"):
        tiny_grit.encode(TEXTS, pooling="max")


def test_bad_input_is_a_clear_error(tiny_grit):
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string, got int"):
        tiny_grit.encode(["ok", 3])
    with pytest.raises(ValueError, match=r"texts\[0\] is an empty string"):
        tiny_grit.encode([""])
    with pytest.raises(ValueError, match=r"texts\[1\] is whitespace only; there is nothing to embed"):
        tiny_grit.encode(["ok", " \n\t "])
    with pytest.raises(TypeError, match="texts must be a string"):
        tiny_grit.encode(42)
    with pytest.raises(ValueError, match="batch_size"):
        tiny_grit.encode(["a"], batch_size=0)


def test_long_texts_are_truncated_with_a_counting_warning(tiny_grit, caplog):
    long = " ".join(["logging"] * 400)
    with caplog.at_level(logging.WARNING, logger="grit.embedding"):
        out = tiny_grit.encode([long, "short", long], max_length=32)
    assert "2 of 3 texts were longer than max_length=32 tokens" in caplog.text
    assert np.isfinite(out).all()
    # The cut keeps the first tokens: a text cut at 32 equals its own first 32-token prefix.
    np.testing.assert_allclose(out[0], tiny_grit.encode(long, max_length=32), atol=1e-6)


def test_instruction_longer_than_max_length_is_refused(tiny_grit):
    with pytest.raises(ValueError, match="the instruction alone takes"):
        tiny_grit.encode(["text"], instruction="word " * 100, max_length=16)


def test_causal_embedding_ablation(tiny_model_path):
    from grit import GritModel

    causal = GritModel.load(tiny_model_path, dtype="float32", bidirectional=False)
    bi = GritModel.load(tiny_model_path, dtype="float32")
    assert float(causal.encode(TEXTS[0]) @ bi.encode(TEXTS[0])) < 0.99999


def test_text_similarity(tiny_grit):
    assert tiny_grit.text_similarity("a cat", "a cat") == pytest.approx(1.0, abs=1e-5)
    assert tiny_grit.text_similarity(["a", "b"], ["c", "d", "e"]).shape == (2, 3)


def test_bfloat16_close_to_float32(tiny_model_path, tiny_grit):
    from grit import GritModel

    bf16 = GritModel.load(tiny_model_path, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    a, b = tiny_grit.encode(TEXTS), bf16.encode(TEXTS)
    assert b.dtype == np.float32
    cosines = (a * b).sum(1)
    assert cosines.min() > 0.99, f"bf16 vs fp32 cosines {cosines}"


MIXED = [
    "A man plays a guitar.",
    "The logging module defines functions and classes which implement a flexible event logging system for "
    "applications and libraries, and the key benefit of having the logging API provided by a standard library module "
    "is that all Python modules can participate in logging.",
    "Hi",
    "argparse makes it easy to write user-friendly command-line interfaces.",
    "json exposes an API familiar to users of the standard library marshal and pickle modules.",
    "ok",
]


@pytest.mark.parametrize("pooling", ["mean", "weighted_mean", "last", "cls"])
@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
def test_packed_batches_equal_padded_ones(tiny_grit, pooling, bidirectional):
    """Several texts in one row, each attending only to itself from position 0: the padded computation's vectors
    (and key/value caches) within float32 round-off."""
    from grit import embedding, packing

    prefix = tiny_grit.format.embed_prefix("Retrieve similar sentences")
    base, tok = tiny_grit.lm.base_model, tiny_grit.tokenizer
    common = dict(batch_size=4, max_length=128, pooling=pooling, normalize=True, bidirectional=bidirectional)
    lengths = sorted(len(x.ids) for x in tiny_grit.embedding_inputs(MIXED, "Retrieve similar sentences"))[::-1]
    _, rows = packing.pack(lengths[:4], packing.attention_width(base.config))
    assert max(len(row) for row in rows) > 1  # the first batch of 4 does put texts side by side
    padded, padded_caches = embedding.embed(base, tok, MIXED, prefix, packed=False, with_cache=True, **common)
    packed, packed_caches = embedding.embed(base, tok, MIXED, prefix, packed=True, with_cache=True, **common)
    np.testing.assert_allclose(packed, padded, atol=2e-5)
    for a, b in zip(packed_caches, padded_caches, strict=True):
        assert a.ids == b.ids and a.attention == b.attention
        for x, y in zip(a.keys + a.values, b.keys + b.values, strict=True):
            torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-4)


def test_packing_puts_short_texts_together_and_every_text_in_one_row():
    from grit.packing import pack

    lengths = [120, 10, 10, 30, 100, 5, 5, 70]
    width, rows = pack(lengths, width_cost=3000)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert width >= max(lengths) and all(sum(lengths[i] for i in row) <= width for row in rows)
    assert len(rows) < len(lengths)  # short texts share rows
    # Rows never get wider than the cheapest choice: with attention as costly as linear layers, a wide row loses.
    narrow, _ = pack([8] * 64, width_cost=8)
    assert narrow < 128


def test_packing_keeps_ids_positions_and_segments_apart(tiny_grit):
    from grit.packing import pack_batch

    items = tiny_grit.embedding_inputs(MIXED, "")
    batch = pack_batch([x.ids for x in items], 0, torch.device("cpu"), width_cost=3000)
    for j, (item, (row, start)) in enumerate(zip(items, batch.places, strict=True)):
        n = len(item.ids)
        assert batch.ids[row, start : start + n].tolist() == item.ids
        assert batch.positions[row, start : start + n].tolist() == list(range(n))
        assert set(batch.segments[row, start : start + n].tolist()) == {j + 1}
    assert int((batch.segments > 0).sum()) == sum(len(x.ids) for x in items)  # every real token once, no more
