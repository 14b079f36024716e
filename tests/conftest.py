"""Shared fixtures: a tiny random Llama with a real (freshly trained) byte-level BPE tokenizer, saved as a
Hugging Face folder, so unit tests exercise the same loading path as real models in well under a second."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizer_corpus() -> list[str]:
    """Real English text that ships with Python: the docstrings of a few standard modules."""
    import argparse
    import collections
    import json
    import logging
    import pathlib
    import textwrap

    return [m.__doc__ or "" for m in (argparse, collections, json, logging, pathlib, textwrap)] * 4


def build_tiny_model(folder: Path, vocab_size: int = 512, seed: int = 0, layers: int = 2) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def deep_model_path(tmp_path_factory) -> Path:
    """A 4-layer tiny model, for what needs layers past the first two (selective recompute's check layer)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-4"), layers=4)


@pytest.fixture(scope="session")
def tiny_grit(tiny_model_path):
    from grit import GritModel

    return GritModel.load(tiny_model_path, dtype="float32", device="cpu")


# Every test computes on the CPU in float32 with plain weights, whatever the machine: "auto" picks bfloat16 on
# AVX512-BF16 / AMX CPUs, float16-stored weights (grit.fp16_weights) for float32 on CPUs with fbgemm,
# and CUDA on GPU hosts, and the tests compare with float32 results (and subprocesses they start inherit this).
# Tests of the auto choice itself take the ``auto_placement`` fixture; bf16 and GPU tests ask for their placement.
PINNED_PLACEMENT = {"GRIT_DEVICE": "cpu", "GRIT_DTYPE": "float32", "GRIT_WEIGHTS": "plain"}


@pytest.fixture(autouse=True, scope="session")
def _pinned_placement():
    old = {name: os.environ.get(name) for name in PINNED_PLACEMENT}
    os.environ.update(PINNED_PLACEMENT)
    yield
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def auto_placement(monkeypatch):
    """No pinned device or dtype: "auto" decides as it would for a user (monkeypatch the CPU flags to test it)."""
    for name in PINNED_PLACEMENT:
        monkeypatch.delenv(name, raising=False)


def native_bf16_reason() -> str | None:
    from grit import hardware

    if hardware.cpu_has_fast_bf16():
        return None
    return "this CPU has neither AMX nor AVX512-BF16: bfloat16 is emulated here (hundreds of times slower)"


def pytest_addoption(parser):
    parser.addoption(
        "--grit-model",
        default=None,
        help="a model folder (a staged adapter) that the slow real-model tests check instead of the shipped default: "
        "the checks a candidate must pass before it ships",
    )


def pytest_collection_modifyitems(config, items):
    """``bf16`` tests run where bfloat16 is native, ``gpu`` tests where CUDA is; elsewhere they skip, saying why."""
    bf16_reason = native_bf16_reason()
    cuda = torch.cuda.is_available() or os.environ.get("GRIT_TEST_GPU") == "cpu"  # "cpu": dry-run the gpu tests
    for item in items:
        if bf16_reason and item.get_closest_marker("bf16"):
            item.add_marker(pytest.mark.skip(reason=bf16_reason))
        if not cuda and item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU on this machine"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never write into the user's ~/.cache/grit unless GRIT_TEST_CACHE points at a shared one (slow tests
    reuse it so the real model converts once per machine, not once per run)."""
    old = os.environ.get("GRIT_CACHE")
    os.environ["GRIT_CACHE"] = os.environ.get("GRIT_TEST_CACHE") or str(tmp_path_factory.mktemp("grit-cache"))
    yield
    if old is None:
        os.environ.pop("GRIT_CACHE", None)
    else:
        os.environ["GRIT_CACHE"] = old
