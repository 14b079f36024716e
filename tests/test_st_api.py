"""The embedding API a sentence-transformers user expects, each call checked against its reference: the GritLM
instruction it stands for, or sentence-transformers' own function on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grit import GritModel, instructions
from grit.quantize import PRECISIONS, calibration_ranges, quantize

TEXTS = ["The json module exposes an API.", "Logging records events.", "Parse the command line with argparse."]


def test_encode_query_uses_the_tasks_instruction_and_documents_none(tiny_grit):
    query = tiny_grit.encode_query(TEXTS, task="SciFact")
    scifact = instructions.side(instructions.GRITLM_E5["SciFact"], "query")
    assert np.array_equal(query, tiny_grit.encode(TEXTS, scifact))
    assert np.array_equal(tiny_grit.encode_document(TEXTS, task="SciFact"), tiny_grit.encode(TEXTS))
    sts = instructions.GRITLM_E5["STSBenchmark"]  # symmetric: one instruction on both sides
    assert np.array_equal(tiny_grit.encode_document(TEXTS, task="STSBenchmark"), tiny_grit.encode(TEXTS, sts))
    assert np.array_equal(tiny_grit.encode_query(TEXTS), tiny_grit.encode(TEXTS, tiny_grit.prompts["query"]))
    assert np.array_equal(tiny_grit.encode(TEXTS, prompt_name="query"), tiny_grit.encode_query(TEXTS))


def test_named_prompts_and_their_errors(tiny_model_path):
    model = GritModel.load(tiny_model_path, prompts={"query": "Find the passage", "clustering": "Cluster topics"})
    assert np.array_equal(model.encode(TEXTS, prompt_name="clustering"), model.encode(TEXTS, "Cluster topics"))
    assert np.array_equal(model.encode_document(TEXTS), model.encode(TEXTS))  # no "document" prompt: none
    with pytest.raises(ValueError, match="no prompt named 'passage'; model.prompts has 'query', 'clustering'"):
        model.encode(TEXTS, prompt_name="passage")
    with pytest.raises(ValueError, match="not both"):
        model.encode(TEXTS, "an instruction", prompt_name="query")
    with pytest.raises(ValueError, match="no GritLM instruction for task 'SciFac'; did you mean 'SciFact'"):
        model.encode_query(TEXTS, task="SciFac")


def test_similarity_is_sentence_transformers_on_embeddings(tiny_grit):
    st_util = pytest.importorskip("sentence_transformers.util")
    a, b = tiny_grit.encode(TEXTS, normalize=False), tiny_grit.encode(TEXTS[:2], normalize=False)
    np.testing.assert_allclose(tiny_grit.similarity(a, b), st_util.cos_sim(a, b).numpy(), atol=1e-6)
    np.testing.assert_allclose(tiny_grit.similarity(a, b, "dot"), st_util.dot_score(a, b).numpy(), rtol=1e-5)
    as_tensor = tiny_grit.similarity(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(as_tensor, torch.Tensor) and torch.allclose(as_tensor, st_util.cos_sim(a, b), atol=1e-6)
    assert tiny_grit.similarity(a[0], b[0]).shape == (1, 1)
    with pytest.raises(TypeError, match="for texts use model.text_similarity"):
        tiny_grit.similarity("a cat", "a dog")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_precision_equals_sentence_transformers_quantize_embeddings(tiny_grit, precision):
    st = pytest.importorskip("sentence_transformers")
    corpus = [f"{t} Number {i}." for i in range(40) for t in TEXTS]  # 120 texts: enough to calibrate int8
    floats = tiny_grit.encode(corpus)
    expected = st.quantize_embeddings(floats, precision)
    got = tiny_grit.encode(corpus, precision=precision)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    ranges = calibration_ranges(floats)
    assert np.array_equal(quantize(floats[:1], precision, ranges=ranges),
                          st.quantize_embeddings(floats[:1], precision, ranges=ranges))  # fmt: skip


def test_int8_of_one_vector_needs_ranges(tiny_grit):
    with pytest.raises(ValueError, match="int8 needs each dimension's range"):
        tiny_grit.encode("one text", precision="int8")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        tiny_grit.encode("one text", precision="int4")


def test_truncate_dim_is_truncate_then_normalize(tiny_model_path, tiny_grit):
    full = tiny_grit.encode(TEXTS)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(tiny_grit.encode(TEXTS, truncate_dim=16), expected, atol=1e-6)
    at_load = GritModel.load(tiny_model_path, truncate_dim=16)
    np.testing.assert_allclose(at_load.encode(TEXTS), expected, atol=1e-6)
    vectors, _ = at_load.encode_with_cache(TEXTS)  # the RAG query path truncates alike
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"truncate_dim must be a whole number in \[1, 64\], got 65"):
        tiny_grit.encode(TEXTS, truncate_dim=65)


def test_convert_to_tensor_and_sentence_transformers_spellings(tiny_grit):
    tensor = tiny_grit.encode(TEXTS, convert_to_tensor=True, show_progress_bar=False)
    assert isinstance(tensor, torch.Tensor) and tensor.device == tiny_grit.device
    assert np.array_equal(tensor.numpy(), tiny_grit.encode(TEXTS))
    raw = tiny_grit.encode(TEXTS, normalize_embeddings=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_save_pretrained_reloads_with_the_same_behaviour(tiny_model_path, tmp_path):
    model = GritModel.load(tiny_model_path, pooling="last", prompts={"query": "Find it", "document": "Passage"},
                           truncate_dim=32)  # fmt: skip
    folder = model.save_pretrained(tmp_path / "saved")
    again = GritModel.load(folder)
    assert (again.pooling, again.prompts, again.truncate_dim) == ("last", model.prompts, 32)
    assert np.array_equal(again.encode_query(TEXTS), model.encode_query(TEXTS))
    assert np.array_equal(again.encode_document(TEXTS), model.encode_document(TEXTS))
    assert again.generate("Say hello.", max_new_tokens=8) == model.generate("Say hello.", max_new_tokens=8)
    assert again.identity.id != model.identity.id  # its own folder and files
    with pytest.raises(FileExistsError, match="holds no model"):
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / "todo.txt").write_text("keep me")
        model.save_pretrained(tmp_path / "notes")


def test_target_nll_equals_cross_entropy_over_full_logits(tiny_grit):
    """The facade's likelihood (the training loss, head on target positions only) equals the plain computation."""
    prompt, target = tiny_grit.chat_ids("Name a module."), tiny_grit.token_ids("The json module.")
    nll, tokens = tiny_grit.target_nll([(prompt, target), (prompt[:5], target[:3])], batch_size=2)
    expected = 0.0
    for p, t in ((prompt, target), (prompt[:5], target[:3])):
        with torch.no_grad():
            logits = tiny_grit.lm(input_ids=torch.tensor([p + t])).logits[0, len(p) - 1 : -1]
        expected += float(torch.nn.functional.cross_entropy(logits, torch.tensor(t), reduction="sum"))
    assert tokens == len(target) + 3 and nll == pytest.approx(expected, rel=1e-5)
