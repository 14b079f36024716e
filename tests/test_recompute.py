"""Selective recompute of joined span caches: ratio 1 is a full prefill, ratio 0 the plain join, and in between
every token gets a full prefill's states up to the check layer and the chosen tokens one layer further."""

import pytest
import torch

from grit.kvcache import compute_cache, join_caches, logits_on_cache
from grit.recompute import block_start_positions, deviating_tokens, fresh_keys, recompute_joined
from grit.transformers_compat import cache_argument, returned_cache

TEXTS = [
    "The json module exposes an API familiar to users of marshal.",
    "The logging module defines functions and classes for event logging.",
    "The argparse module makes it easy to write command-line interfaces.",
]


@pytest.fixture(scope="module")
def parts(tiny_grit):
    docs = [tiny_grit.embedding_ids(t) for t in TEXTS]
    tail = tiny_grit.chat_ids([{"role": "user", "content": "Which module logs events?"}], before="\n")
    ids = [t for d in docs for t in d]
    with torch.inference_mode():
        full = tiny_grit.lm(input_ids=torch.tensor([ids + tail])).logits[0, len(ids) :]
        prefill = returned_cache(tiny_grit.lm.base_model(input_ids=torch.tensor([ids]), use_cache=True))
    return docs, tail, ids, full, prefill


def tail_logits(lm, cache, start: int, tail: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        out = lm(input_ids=torch.tensor([tail]), position_ids=torch.arange(start, start + len(tail))[None],
                 use_cache=True, **cache_argument(cache))  # fmt: skip
    return out.logits[0]


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    p, q = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


@pytest.mark.parametrize("source", ["bidirectional", "causal"])
def test_recomputing_every_token_is_a_full_prefill(tiny_grit, parts, source):
    docs, tail, ids, full, _ = parts
    spans = [compute_cache(tiny_grit.lm.base_model, d, source) for d in docs]
    cache, joined_ids, chosen = recompute_joined(tiny_grit.lm.base_model, spans, 1.0)
    assert joined_ids == ids and chosen.tolist() == list(range(len(ids)))
    assert (tail_logits(tiny_grit.lm, cache, len(ids), tail) - full).abs().max().item() < 1e-4


def test_recomputing_nothing_is_the_plain_join(tiny_grit, parts):
    docs, tail, ids, _, _ = parts
    spans = [compute_cache(tiny_grit.lm.base_model, d, "bidirectional") for d in docs]
    cache, _, chosen = recompute_joined(tiny_grit.lm.base_model, spans, 0.0)
    assert len(chosen) == 0
    joined = logits_on_cache(tiny_grit.lm, spans, tail)
    torch.testing.assert_close(tail_logits(tiny_grit.lm, cache, len(ids), tail), joined)


@pytest.fixture(scope="module")
def deep_grit(deep_model_path):
    """With the check at layer 1, the 4-layer tiny model has two layers left where only chosen tokens move."""
    from grit import GritModel

    return GritModel.load(deep_model_path, dtype="float32")


def test_the_most_deviating_tokens_get_the_full_prefills_states(deep_grit):
    docs = [deep_grit.embedding_ids(t) for t in TEXTS]
    tail = deep_grit.chat_ids([{"role": "user", "content": "Which module logs events?"}], before="\n")
    ids = [t for d in docs for t in d]
    base = deep_grit.lm.base_model
    with torch.inference_mode():
        full = deep_grit.lm(input_ids=torch.tensor([ids + tail])).logits[0, len(ids) :]
        prefill = returned_cache(base(input_ids=torch.tensor([ids]), use_cache=True))
    spans = [compute_cache(base, d, "bidirectional") for d in docs]
    plain, _ = join_caches(base, spans)
    fresh = fresh_keys(base, ids, 1)
    torch.testing.assert_close(fresh, prefill.layers[1].keys[0], atol=1e-5, rtol=1e-5)  # layers up to 1 only
    cache, _, chosen = recompute_joined(base, spans, 0.3, check_layer=1)
    assert len(chosen) == -(-3 * len(ids) // 10)  # ceil(0.3 n)
    assert chosen.tolist() == deviating_tokens(fresh, plain.layers[1].keys[0], len(chosen)).tolist()
    kept = torch.ones(len(ids), dtype=torch.bool)
    kept[chosen] = False

    def close(a, b):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    # Up to the check layer every token has the full prefill's states (the check pass is one).
    for layer in (0, 1):
        close(cache.layers[layer].keys[0], prefill.layers[layer].keys[0])
        close(cache.layers[layer].values[0], prefill.layers[layer].values[0])
    # One layer on, the chosen tokens' keys come from exact inputs; the others keep their joined states there.
    close(cache.layers[2].keys[0][:, chosen], prefill.layers[2].keys[0][:, chosen])
    torch.testing.assert_close(cache.layers[2].keys[0][:, kept], plain.layers[2].keys[0][:, kept])
    assert (plain.layers[2].keys[0][:, chosen] - prefill.layers[2].keys[0][:, chosen]).abs().max() > 1e-3
    # Closer to the full prefill than the plain join, and more so with more recomputed.
    plain_kl = kl(full, logits_on_cache(deep_grit.lm, spans, tail))
    some = kl(full, tail_logits(deep_grit.lm, cache, len(ids), tail))
    more = kl(full, tail_logits(deep_grit.lm, recompute_joined(base, spans, 0.6)[0], len(ids), tail))
    assert more < some < plain_kl


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_a_ratio_outside_0_to_1_is_refused(tiny_grit, ratio):
    span = compute_cache(tiny_grit.lm.base_model, [5, 6, 7], "causal")
    with pytest.raises(ValueError, match="recompute_ratio must be between 0 and 1"):
        recompute_joined(tiny_grit.lm.base_model, [span], ratio)


def test_a_check_layer_outside_the_model_is_refused(tiny_grit):
    span = compute_cache(tiny_grit.lm.base_model, [5, 6, 7], "causal")
    with pytest.raises(ValueError, match="check_layer must be in 0..1"):
        recompute_joined(tiny_grit.lm.base_model, [span, span], 0.5, check_layer=2)


def test_block_starts_are_always_recomputed_within_the_budget(tiny_grit, parts):
    docs, _, ids, _, _ = parts
    base = tiny_grit.lm.base_model
    spans = [compute_cache(base, d, "bidirectional") for d in docs]
    starts = [sum(len(d) for d in docs[:i]) + j for i in range(len(docs)) for j in range(2)]
    assert block_start_positions(spans, 2, "cpu").tolist() == starts
    _, _, plain = recompute_joined(base, spans, 0.3)
    _, _, chosen = recompute_joined(base, spans, 0.3, block_starts=2)
    assert len(chosen) == len(plain) == -(-3 * len(ids) // 10)
    assert set(starts) <= set(chosen.tolist()) and chosen.tolist() == sorted(chosen.tolist())
    assert not set(starts) <= set(plain.tolist())  # else the test shows nothing
    _, _, tight = recompute_joined(base, spans, 0.01, block_starts=2)  # a budget under the starts: they all go
    assert tight.tolist() == starts
    with pytest.raises(ValueError, match="block_starts must be >= 0"):
        recompute_joined(base, spans, 0.3, block_starts=-1)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_a_suffix_run_in_the_recompute_passes_equals_running_it_after(deep_grit, ratio):
    """RAG hands the question turn to the recompute so that it needs no pass of its own: the cache (every layer,
    every position) and the next-token logits equal recomputing first and running the question on top."""
    docs = [deep_grit.embedding_ids(t) for t in TEXTS]
    tail = deep_grit.chat_ids([{"role": "user", "content": "Which module logs events?"}], before="\n")
    base = deep_grit.lm.base_model
    spans = [compute_cache(base, d, "bidirectional") for d in docs]
    n = sum(len(d) for d in docs)
    fused, ids, chosen = recompute_joined(base, spans, ratio, suffix=tail[:-1])
    apart, _, chosen_apart = recompute_joined(base, spans, ratio)
    tail_logits(deep_grit.lm, apart, n, tail[:-1])  # the question on top, the way it was before
    assert ids == [t for d in docs for t in d] + tail[:-1] and torch.equal(chosen, chosen_apart)
    assert fused.get_seq_length() == apart.get_seq_length() == n + len(tail) - 1
    for a, b in zip(fused.layers, apart.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)
    last = n + len(tail) - 1
    torch.testing.assert_close(tail_logits(deep_grit.lm, fused, last, tail[-1:]),
                               tail_logits(deep_grit.lm, apart, last, tail[-1:]), atol=1e-4, rtol=1e-4)  # fmt: skip
    if ratio == 1.0:  # and all of it recomputed is a full prefill of documents and question
        with torch.inference_mode():
            full = deep_grit.lm(input_ids=torch.tensor([ids + tail[-1:]])).logits[0, -1]
        fresh = recompute_joined(base, spans, 1.0, suffix=tail[:-1])[0]
        torch.testing.assert_close(tail_logits(deep_grit.lm, fresh, last, tail[-1:])[-1], full, atol=1e-4,
                                   rtol=1e-4)  # fmt: skip
