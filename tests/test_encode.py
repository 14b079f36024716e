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
