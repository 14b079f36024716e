"""grit.decode_step: the batched decoding step over growing key/value buffers equals the model's own forward."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from grit import decode_step
from grit.decode_step import KVBatch, llama_step, llama_unsupported, step_for, transformers_step
from grit.transformers_compat import cache_argument

PROMPTS = ["Hello there", "The logging module defines functions and classes", "Hi"]
STEPS = {"llama": llama_step, "transformers": transformers_step}


def prefill(lm, ids: torch.Tensor) -> DynamicCache:
    cache = DynamicCache(config=lm.config)
    with torch.inference_mode():
        lm(input_ids=ids, use_cache=True, **cache_argument(cache))
    return cache


def alone(lm, ids: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Logits (steps, vocab) of the model's forward fed ``tokens`` one at a time after the prompt ``ids``."""
    cache = prefill(lm, ids)
    out = []
    with torch.inference_mode():
        for i, token in enumerate(tokens):
            position = torch.tensor([[ids.shape[1] + i]])
            now = torch.tensor([[token]])
            out.append(lm(input_ids=now, position_ids=position, use_cache=True, **cache_argument(cache)).logits[0, -1])
    return torch.stack(out)


def feed(lm, step, batch: KVBatch, ids_list, tokens: list[list[int]], done: int = 0) -> torch.Tensor:
    """Logits (rows, steps, vocab) of ``step`` run over the batch, each row fed its own tokens (after ``done`` fed
    before)."""
    out = []
    for i in range(len(tokens[0])):
        now = torch.tensor([[row[i]] for row in tokens])
        positions = torch.tensor([[ids.shape[1] + done + i] for ids in ids_list])
        out.append(step(lm, batch, now, positions))
    return torch.stack(out, 1)


@pytest.fixture
def prompts(tiny_grit):
    ids_list = [tiny_grit.tokenizer(p, return_tensors="pt").input_ids for p in PROMPTS]
    assert len({ids.shape[1] for ids in ids_list}) == len(PROMPTS)  # left padding differs per row
    tokens = [[(7 * r + 3 * i) % 200 + 10 for i in range(6)] for r in range(len(PROMPTS))]
    return ids_list, tokens


@pytest.mark.parametrize("name", sorted(STEPS))
def test_a_left_padded_batch_gives_each_row_its_own_logits(tiny_grit, prompts, name):
    lm = tiny_grit.lm
    ids_list, tokens = prompts
    batch = KVBatch.stack([KVBatch.of_cache(prefill(lm, ids)) for ids in ids_list])
    got = feed(lm, STEPS[name], batch, ids_list, tokens)
    for row, ids in enumerate(ids_list):
        torch.testing.assert_close(got[row], alone(lm, ids, tokens[row]), atol=2e-5, rtol=1e-4)
    assert batch.length == max(ids.shape[1] for ids in ids_list) + len(tokens[0])


def test_the_llama_step_computes_what_the_forward_computes_to_the_bit(tiny_grit, prompts):
    """One row, float32: transformers' operations in transformers' order give identical logits."""
    lm = tiny_grit.lm
    ids_list, tokens = prompts
    batch = KVBatch.of_cache(prefill(lm, ids_list[1]))
    got = feed(lm, llama_step, batch, ids_list[1:2], tokens[1:2])[0]
    assert torch.equal(got, alone(lm, ids_list[1], tokens[1]))


@pytest.mark.parametrize("name", sorted(STEPS))
def test_buffers_grow_when_full_and_keep_what_they_held(tiny_grit, prompts, monkeypatch, name):
    monkeypatch.setattr(decode_step, "GROW", 2)
    lm = tiny_grit.lm
    ids_list, tokens = prompts
    batch = KVBatch.of_cache(prefill(lm, ids_list[0]), extra=1)
    got = feed(lm, STEPS[name], batch, ids_list[:1], tokens[:1])[0]  # 6 tokens: grows at 2, 4 and 6
    torch.testing.assert_close(got, alone(lm, ids_list[0], tokens[0]), atol=2e-5, rtol=1e-4)
    assert batch.capacity == ids_list[0].shape[1] + 1 + 2 * 3


def test_keep_drops_rows_and_the_padding_only_they_needed(tiny_grit, prompts):
    lm = tiny_grit.lm
    ids_list, tokens = prompts
    batch = KVBatch.stack([KVBatch.of_cache(prefill(lm, ids)) for ids in ids_list])
    feed(lm, llama_step, batch, ids_list, [t[:2] for t in tokens])
    longest = max(range(len(ids_list)), key=lambda r: ids_list[r].shape[1])
    short = [r for r in range(len(ids_list)) if r != longest]
    kept = batch.keep(short)
    # The longest prompt's row left: the columns in front of the longest kept prompt are gone.
    assert kept.length == max(ids_list[r].shape[1] for r in short) + 2
    assert kept.rows == len(short) and kept.capacity - kept.length == batch.capacity - batch.length
    rest = feed(lm, llama_step, kept, [ids_list[r] for r in short], [tokens[r][2:] for r in short], done=2)
    for i, r in enumerate(short):
        torch.testing.assert_close(rest[i], alone(lm, ids_list[r], tokens[r])[2:], atol=2e-5, rtol=1e-4)


def test_float16_stored_weights_take_the_llama_step_too(tiny_model_path, prompts):
    from grit import GritModel
    from grit.fp16_weights import unavailable

    if unavailable():
        pytest.skip(unavailable())
    packed = GritModel.load(tiny_model_path, dtype="float32", device="cpu", weights="float16").lm
    ids_list, tokens = prompts
    batch = KVBatch.of_cache(prefill(packed, ids_list[0]))
    got = feed(packed, llama_step, batch, ids_list[:1], tokens[:1])[0]
    assert torch.equal(got, alone(packed, ids_list[0], tokens[0]))


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    return Qwen2ForCausalLM(config)


def test_the_server_offers_every_step_kind():
    from typing import get_args

    from grit.serve.config import DecodeStep

    assert set(get_args(DecodeStep)) == {"auto", *decode_step.STEPS}


def test_auto_takes_the_llama_step_for_llama_and_the_forward_for_others(tiny_grit):
    assert step_for(tiny_grit.lm) is llama_step
    other = tiny_qwen2()
    assert "Qwen2ForCausalLM" in llama_unsupported(other)
    assert step_for(other) is transformers_step
    assert step_for(tiny_grit.lm, "transformers") is transformers_step


@pytest.mark.parametrize(
    ("kind", "message"), [("llama", "cannot run this model: it is a Qwen2ForCausalLM"), ("fast", "unknown decoding")]
)
def test_a_step_that_cannot_run_is_refused_by_name(kind, message):
    with pytest.raises(ValueError, match=message):
        step_for(tiny_qwen2(), kind)


def test_the_forward_step_decodes_a_model_the_llama_step_cannot(prompts):
    torch.manual_seed(0)
    lm = tiny_qwen2().eval()
    ids = torch.tensor([[1, 5, 9, 3]])
    tokens = [[4, 8, 15, 16]]
    batch = KVBatch.of_cache(prefill(lm, ids))
    got = feed(lm, transformers_step, batch, [ids], tokens)[0]
    torch.testing.assert_close(got, alone(lm, ids, tokens[0]), atol=2e-5, rtol=1e-4)
