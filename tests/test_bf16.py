"""bfloat16 against float32, on the tiny random Llama: what "auto" runs on AVX512-BF16 / AMX CPUs and on GPUs.

Marked ``bf16``: they run where this CPU multiplies bfloat16 natively and skip elsewhere (emulated bf16 is hundreds
of times slower, and nobody would choose it). Tolerances are what bfloat16's 8-bit mantissa allows (a relative
error of ~0.4% per value): embeddings agree to a cosine of 0.99, losses to a few percent.
"""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from serve.serveutil import row_cosines
from train.trainutil import read_log, tiny_config, write_data

from grit import GritModel
from grit.train.trainer import train

pytestmark = pytest.mark.bf16
TEXTS = ["The json module exposes an API.", "Logging records events.", "Parse the command line with argparse."]


def encode_both(path, instruction="Represent the text"):
    f32 = GritModel.load(path, dtype="float32", device="cpu")
    b16 = GritModel.load(path, dtype="bfloat16", device="cpu")
    assert b16.lm.dtype is torch.bfloat16 and b16.placement.dtype is torch.bfloat16
    return f32.encode(TEXTS, instruction), b16.encode(TEXTS, instruction)


def test_bf16_embeddings_agree_with_float32(tiny_model_path):
    f32, b16 = encode_both(tiny_model_path)
    assert b16.dtype == np.float32  # vectors come back in float32 whatever the compute dtype
    cosines = row_cosines(f32, b16)
    assert cosines.min() >= 0.99, cosines


def test_a_bf16_training_step_agrees_with_float32(tiny_model_path, tmp_path):
    """Full fine-tuning under bf16 autocast (float32 weights): the first step's losses agree with float32's."""
    data = write_data(tmp_path / "data")
    losses = {}
    for dtype in ("float32", "bfloat16"):
        train(tiny_config(tiny_model_path, data, tmp_path / dtype, max_steps=1, dtype=dtype))
        first = read_log(tmp_path / dtype)[0]
        assert first["placement"]["dtype"] == dtype
        losses[dtype] = (first["loss_emb"], first["loss_gen"])
    for name, a, b in zip(("contrastive", "next-token"), losses["float32"], losses["bfloat16"], strict=True):
        assert b == pytest.approx(a, rel=0.05), f"{name} loss: float32 {a:.4f}, bfloat16 {b:.4f}"


def test_a_lora_adapter_merged_in_bf16_agrees_with_float32(tiny_model_path, tmp_path):
    """A LoRA run in bf16 merges its float32 adapters into the bf16 base; loading its adapter into float32 and into
    bfloat16 gives the same embeddings within bf16's precision, and both differ from the untrained base."""
    data = write_data(tmp_path / "data")
    out = tmp_path / "lora"
    train(tiny_config(tiny_model_path, data, out, "lora.enabled=true", "lora.dropout=0", max_steps=3,
                      dtype="bfloat16"))  # fmt: skip
    merged = load_file(out / "final" / "model.safetensors")
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}  # merged and saved in the compute dtype
    f32, b16 = encode_both(out / "adapter")
    assert row_cosines(f32, b16).min() >= 0.99
    base = GritModel.load(tiny_model_path).encode(TEXTS, "Represent the text")
    assert row_cosines(f32, base).min() < 0.999  # the adapter did change the model
