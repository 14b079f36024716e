"""CUDA against the CPU, on the tiny random Llama in float32: the same model gives the same embeddings, greedy
tokens, training step and joined KV cache on a GPU as on the CPU (up to float32 round-off in other kernels).

Marked ``gpu``: they run on a CUDA host and skip elsewhere. ``GRIT_TEST_GPU=cpu`` runs them with the CPU standing in
for the GPU (both sides then agree trivially), to check the tests themselves on a machine without one.
"""

import os

import pytest
import torch

from grit import GritModel, generation
from grit.generation import SamplingParams
from grit.kvcache import compute_cache, logits_on_cache, reference_logits
from grit.train.trainer import train

pytestmark = pytest.mark.gpu
TEXTS = ["The json module exposes an API.", "Logging records events.", "Parse the command line with argparse."]


@pytest.fixture(scope="module")
def accelerator() -> torch.device:
    return torch.device(os.environ.get("GRIT_TEST_GPU") or "cuda")


@pytest.fixture(scope="module")
def both(tiny_model_path, accelerator) -> tuple[GritModel, GritModel]:
    """The tiny model on the CPU and on the accelerator, float32 on both; TF32 off so matmuls stay float32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu = GritModel.load(tiny_model_path, device="cpu", dtype="float32")
    gpu = GritModel.load(tiny_model_path, device=accelerator, dtype="float32")
    assert gpu.device.type == accelerator.type and gpu.placement.device.type == accelerator.type
    return cpu, gpu


def test_encode_on_the_gpu_equals_the_cpu(both):
    cpu, gpu = both
    a, b = cpu.encode(TEXTS, "Represent the text"), gpu.encode(TEXTS, "Represent the text")
    assert abs(a - b).max() < 1e-4, f"max difference {abs(a - b).max():.2e}"


def test_greedy_generation_on_the_gpu_follows_the_cpu(both):
    """Teacher-forced over the CPU's greedy answer, the GPU's logits agree, and so does every greedy choice that is
    not a near-tie (a random model's top two logits can be closer than round-off)."""
    cpu, gpu = both
    prompt = cpu.prompt_ids("Name a module that logs events.", 12)
    with torch.no_grad():
        ids = cpu.lm.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=cpu.tokenizer.pad_token_id)
    answer = ids[0, prompt.shape[1] :]
    with torch.no_grad():
        on_cpu = cpu.lm(input_ids=ids).logits[0, prompt.shape[1] - 1 : -1]
        on_gpu = gpu.lm(input_ids=ids.to(gpu.device)).logits[0, prompt.shape[1] - 1 : -1].cpu()
    assert (on_cpu - on_gpu).abs().max() < 1e-3
    top2 = on_cpu.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-2
    assert torch.equal(on_gpu.argmax(-1)[clear], answer[clear])
    text = generation.generate_text(gpu.lm, gpu.tokenizer, prompt.to(gpu.device), SamplingParams(12))
    if bool(clear.all()):  # no near-tie on the way: the GPU's own greedy answer is the CPU's, token for token
        assert text == cpu.tokenizer.decode(answer, skip_special_tokens=True)


def test_a_training_step_on_the_gpu_equals_the_cpu(tiny_model_path, tmp_path, accelerator):
    from train.trainutil import read_log, tiny_config, write_data

    data = write_data(tmp_path / "data")
    firsts = {}
    for name, device in (("cpu", "cpu"), ("gpu", str(accelerator))):
        train(tiny_config(tiny_model_path, data, tmp_path / name, max_steps=2, device=device, dtype="float32"))
        log = read_log(tmp_path / name)
        assert log[0]["placement"]["device"].startswith(accelerator.type if name == "gpu" else "cpu")
        firsts[name] = [(r["loss_emb"], r["loss_gen"], r["grad_norm"]) for r in log]
    for cpu_step, gpu_step in zip(firsts["cpu"], firsts["gpu"], strict=True):
        assert gpu_step == pytest.approx(cpu_step, rel=1e-3)


def test_joined_kv_caches_on_the_gpu_equal_the_cpu(both):
    """Three causally cached documents, re-rotated and joined: the question's logits on top of them equal a fresh
    block-masked computation on each device, and the two devices agree."""
    results = []
    for model in both:
        ids = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
        question = model.tokenizer("\nWhich module logs events?", add_special_tokens=False)["input_ids"]
        spans = [compute_cache(model.lm.base_model, d, "causal") for d in ids]
        joined = logits_on_cache(model.lm, spans, question).cpu()
        fresh = reference_logits(model.lm, ids, question).cpu()
        assert (joined - fresh).abs().max() < 1e-4
        results.append(joined)
    assert (results[0] - results[1]).abs().max() < 1e-3
