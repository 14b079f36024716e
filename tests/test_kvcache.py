"""KV-cache reuse against fresh computation, on the tiny random Llama in float32."""

import pytest
import torch

from grit.kvcache import (
    SpanCache,
    block_attention,
    compute_cache,
    join_caches,
    logits_on_cache,
    reference_logits,
    shift_keys,
)
from grit.transformers_compat import returned_cache


def ids_of(grit, text):
    return grit.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_causal_doc_cache_gives_the_same_logits_as_no_cache(tiny_grit):
    doc = ids_of(tiny_grit, "<|embed|>\nThe json module exposes an API familiar to users of marshal.")
    question = ids_of(tiny_grit, "\nWhat does json expose?\nThe answer is")
    cached = logits_on_cache(tiny_grit.lm, [compute_cache(tiny_grit.lm.base_model, doc, "causal")], question)
    with torch.no_grad():
        fresh = tiny_grit.lm(input_ids=torch.tensor([doc + question])).logits[0, len(doc) :]
    diff = (cached - fresh).abs().max().item()
    assert diff < 1e-4, f"max logit difference {diff}"


def test_bidirectional_cache_differs_from_causal(tiny_grit):
    doc = ids_of(tiny_grit, "The logging module defines functions and classes.")
    bi = compute_cache(tiny_grit.lm.base_model, doc, "bidirectional")
    causal = compute_cache(tiny_grit.lm.base_model, doc, "causal")
    assert bi.attention == "bidirectional" and len(bi) == len(doc)
    assert (bi.keys[-1] - causal.keys[-1]).abs().max() > 1e-3
    torch.testing.assert_close(bi.keys[0], causal.keys[0])  # layer 0 keys come from embeddings only


def test_shifted_keys_equal_keys_computed_at_that_position(tiny_grit):
    base = tiny_grit.lm.base_model
    doc = ids_of(tiny_grit, "Argument parsing made easy.")
    at_zero = compute_cache(base, doc, "causal")
    offset = 37
    with torch.no_grad():
        out = base(input_ids=torch.tensor([doc]), position_ids=torch.arange(offset, offset + len(doc))[None],
                   use_cache=True)  # fmt: skip
    for layer, cached in zip(returned_cache(out).layers, at_zero.keys, strict=True):
        torch.testing.assert_close(shift_keys(base, cached, offset), layer.keys[0], atol=1e-5, rtol=1e-5)
    twice = shift_keys(base, shift_keys(base, at_zero.keys[1], 10), 27)
    torch.testing.assert_close(twice, shift_keys(base, at_zero.keys[1], 37), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_multi_document_cache_with_rope_shift_matches_fresh_computation(tiny_grit, attention):
    """Joined span caches (each computed at positions from 0, then re-rotated) equal one block-masked forward:
    for ``bidirectional`` spans (the embedding pass's free caches) too, which is what a model trained under that
    mask learns to read."""
    base = tiny_grit.lm.base_model
    docs = [
        ids_of(tiny_grit, "<|embed|>\nThe json module exposes an API familiar to users of marshal."),
        ids_of(tiny_grit, "<|embed|>\nThe logging module defines functions and classes for event logging."),
        ids_of(tiny_grit, "<|embed|>\nThe argparse module makes it easy to write command-line interfaces."),
    ]
    question = ids_of(tiny_grit, "\nWhich module logs events?\nThe answer is")
    spans = [compute_cache(base, d, attention) for d in docs]
    fresh = reference_logits(tiny_grit.lm, docs, question, attention)
    fixed = (logits_on_cache(tiny_grit.lm, spans, question) - fresh).abs().max().item()
    gritlm = (logits_on_cache(tiny_grit.lm, spans, question, reposition=False) - fresh).abs().max().item()
    assert fixed < 1e-4, f"RoPE-shifted cache: max logit difference {fixed}"
    assert gritlm > 100 * fixed, f"plain concatenation should be far off: {gritlm} vs {fixed}"


def test_block_attention_by_hand():
    t, f = True, False
    causal = [[t, f, f, f, f], [t, t, f, f, f], [f, f, t, f, f], [t, t, t, t, f], [t, t, t, t, t]]
    bidirectional = [[t, t, f, f, f], [t, t, f, f, f], [f, f, t, f, f], [t, t, t, t, f], [t, t, t, t, t]]
    assert block_attention([2, 1], 2, "causal").tolist() == causal
    assert block_attention([2, 1], 2, "bidirectional").tolist() == bidirectional
    with pytest.raises(ValueError, match="attention must be"):
        block_attention([2], 1, "both")


def test_join_needs_spans(tiny_grit):
    with pytest.raises(ValueError, match="no cached spans"):
        join_caches(tiny_grit.lm.base_model, [])


def test_span_size(tiny_grit):
    span = compute_cache(tiny_grit.lm.base_model, [5, 6, 7], "causal")
    assert isinstance(span, SpanCache)
    # 2 layers x (keys + values) x 2 kv heads x 3 tokens x head_dim 16 x 4 bytes
    assert span.nbytes() == 2 * 2 * 2 * 3 * 16 * 4


def test_encode_with_cache_returns_the_embedding_pass_states(tiny_grit):
    texts = ["The json module exposes an API.", "Logging."]
    vectors, caches = tiny_grit.encode_with_cache(texts)
    import numpy as np

    np.testing.assert_allclose(vectors, tiny_grit.encode(texts), atol=1e-6)
    for text, cache in zip(texts, caches, strict=True):
        ids = tiny_grit.tokenizer(tiny_grit.format.embed_prefix("") + text)["input_ids"]
        alone = compute_cache(tiny_grit.lm.base_model, ids, "bidirectional")
        assert cache.ids == ids and cache.attention == "bidirectional"
        torch.testing.assert_close(cache.keys[-1], alone.keys[-1], atol=1e-5, rtol=1e-5)  # padding did not leak
