"""Float16-stored linear weights for float32 compute on a CPU (grit.fp16_weights): what "auto" picks, what is
refused, and that a packed model computes what the plain one does within float16 rounding of its weights."""

import numpy as np
import pytest
import torch

from grit import GritModel, hardware
from grit.cli import main as cli_main
from grit.fp16_weights import Float16Linear, is_packed, pack_linear_weights, unavailable

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


@pytest.fixture(scope="module")
def plain_and_packed(tiny_model_path):
    return (GritModel.load(tiny_model_path, dtype="float32", device="cpu", weights="plain"),
            GritModel.load(tiny_model_path, dtype="float32", device="cpu", weights="float16"))  # fmt: skip


def fp16_rounded(lm: torch.nn.Module) -> torch.nn.Module:
    """``lm`` with every linear weight rounded to float16 and back: what a packed layer multiplies by."""
    for module in lm.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight = torch.nn.Parameter(module.weight.detach().half().float())
    return lm


def test_a_packed_layer_multiplies_by_its_float16_rounded_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80)
    packed = Float16Linear(linear)
    for shape in [(1, 48), (7, 48), (2, 5, 48)]:  # a decoding row, a prefill, a batch of sequences
        x = torch.randn(shape)
        expected = torch.nn.functional.linear(x, linear.weight.half().float(), linear.bias)
        torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.equal(packed(x), linear(x))  # the weights really are float16: not the float32 product


def test_packing_replaces_every_linear_and_unties_the_head(tiny_model_path):
    model = GritModel.load(tiny_model_path, weights="plain")
    lm = model.lm
    linears = sum(isinstance(m, torch.nn.Linear) for m in lm.modules())
    embedding = lm.get_input_embeddings().weight.detach().clone()
    assert pack_linear_weights(lm) == linears > 0
    assert is_packed(lm) and not any(isinstance(m, torch.nn.Linear) for m in lm.modules())
    assert isinstance(lm.get_output_embeddings(), Float16Linear)
    assert torch.equal(lm.get_input_embeddings().weight, embedding)  # the lookup table stays float32


def test_a_packed_model_refuses_to_train_instead_of_skipping_its_layers(plain_and_packed):
    _, packed = plain_and_packed
    assert not any(p.requires_grad for p in packed.lm.parameters())
    ids = torch.tensor([packed.chat_ids("Hi")])
    packed.lm.get_input_embeddings().weight.requires_grad_(True)  # a user turning training back on by hand
    try:
        with pytest.raises(RuntimeError, match=r"no gradient; load the model with weights='plain'"):
            packed.lm(input_ids=ids)
    finally:
        packed.lm.get_input_embeddings().weight.requires_grad_(False)


def test_packed_logits_equal_the_plain_model_with_float16_rounded_weights(plain_and_packed):
    plain, packed = plain_and_packed
    ids = torch.tensor([plain.chat_ids("How are rivers formed?")])
    with torch.inference_mode():
        rounded = fp16_rounded(GritModel.load(plain.path, weights="plain").lm)(input_ids=ids).logits
        got = packed.lm(input_ids=ids).logits
        full = plain.lm(input_ids=ids).logits
    torch.testing.assert_close(got, rounded, rtol=1e-4, atol=1e-4)
    assert (got - full).abs().max() < 0.05 * full.abs().max()  # close to float32, not equal to it


def test_packed_embeddings_match_the_plain_ones(plain_and_packed):
    plain, packed = plain_and_packed
    texts = ["A man plays a guitar.", "Rivers carve valleys over thousands of years.", "Short."]
    a, b = plain.encode(texts), packed.encode(texts)
    cosines = (a * b).sum(1)
    assert np.all(cosines > 0.999), cosines


def test_batched_decoding_of_a_packed_model_equals_one_at_a_time(plain_and_packed):
    from grit.decoding import ContinuousDecoder
    from grit.generation import SamplingParams
    from grit.serve.scheduler import FairGate

    _, packed = plain_and_packed
    prompts = [packed.prompt_ids([{"role": "user", "content": q}], 12) for q in ("Hi there", "Name a colour, please")]
    params = SamplingParams(12, min_new_tokens=12)
    decoder = ContinuousDecoder(packed.lm, packed.tokenizer, FairGate())
    try:
        alone = [decoder.generate(ids, params) for ids in prompts]
        futures = [decoder.start(ids, params) for ids in prompts]
        together = [f.result() for f in futures]
    finally:
        decoder.close()
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)


def test_saving_a_packed_model_writes_the_weights_it_was_loaded_from(plain_and_packed, tmp_path):
    plain, packed = plain_and_packed
    packed.save_pretrained(tmp_path / "saved")
    again = GritModel.load(tmp_path / "saved", weights="plain")
    for (name, a), (_, b) in zip(plain.lm.state_dict().items(), again.lm.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # float32 as loaded, not float16-rounded


def test_a_packed_model_keys_its_rag_caches_and_eval_cache_apart(plain_and_packed):
    from grit.eval.encoders import fingerprint

    plain, packed = plain_and_packed
    assert plain.placement.numerics == "float32" and packed.placement.numerics == "float32+float16-weights"
    assert fingerprint(plain) != fingerprint(packed)
    assert packed.placement.as_dict()["weights"] == "float16"


@pytest.mark.parametrize(("device", "dtype", "expected"), [
    (CPU, torch.float32, "float16"),        # float32 on a CPU: half the bytes per decoding step
    (CPU, torch.bfloat16, "plain"),         # already 2 bytes a weight, and fbgemm's kernel is for float32
    (torch.device("cuda", 0), torch.bfloat16, "plain"),
])  # fmt: skip
def test_auto_weights(auto_placement, device, dtype, expected):
    assert hardware.resolve_weights("auto", device, dtype) == expected
    assert hardware.resolve_weights(None, device, dtype) == expected


def test_the_environment_fills_in_auto_and_explicit_values_win(monkeypatch):
    monkeypatch.setenv("GRIT_WEIGHTS", "float16")
    assert hardware.resolve_weights("auto", CPU, torch.float32) == "float16"
    assert hardware.resolve_weights("plain", CPU, torch.float32) == "plain"
    monkeypatch.setenv("GRIT_WEIGHTS", "plain")
    assert hardware.resolve_placement("cpu", "float32").weights == "plain"


@pytest.mark.parametrize(("weights", "device", "dtype", "message"), [
    ("int4", CPU, torch.float32, r"weights 'int4': expected auto or one of plain, float16"),
    ("float16", CPU, torch.bfloat16, r"weights 'float16': float16 weights are fbgemm's CPU kernels for float32 "
                                     r"compute, and the dtype is bfloat16, not float32"),
    ("float16", torch.device("cuda", 0), torch.float32, r"and the device is cuda:0"),
])  # fmt: skip
def test_weights_grit_cannot_run_are_refused_saying_why(weights, device, dtype, message):
    with pytest.raises(ValueError, match=message):
        hardware.resolve_weights(weights, device, dtype)


def test_a_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("GRIT_WEIGHTS", "q4")
    with pytest.raises(ValueError, match=r"GRIT_WEIGHTS='q4': expected auto or one of plain, float16"):
        hardware.resolve_placement("cpu", "float32")


def test_training_placements_are_plain():
    with pytest.raises(ValueError, match="weights must be one of plain, float16"):
        hardware.Placement(CPU, torch.float32, 1, "int8")
    assert hardware.Placement(CPU, torch.float32, 1).weights == "plain"


def test_the_cli_takes_weights_and_shows_them(tiny_model_path, capsys):
    assert cli_main(["info", "--model", str(tiny_model_path), "--weights", "float16", "--threads", "1"]) == 0
    facts = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert facts["weights"] == "float16" and facts["dtype"] == "float32"
    assert cli_main(["info", "--model", str(tiny_model_path), "--weights", "float16", "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grit: error: weights 'float16': float16 weights are fbgemm's") and err.count("\n") == 1
