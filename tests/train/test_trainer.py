"""The trainer end to end on the tiny random model: each mode lowers its loss, LoRA trains only adapters and its
merged output loads, the example configs parse, the CLI trains and plots."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from safetensors.torch import load_file

from grit import GritModel
from grit.cli import main as cli_main
from grit.train.config import DataConfig, TrainConfig
from grit.train.trainer import find_resume, train

from .trainutil import read_log, tiny_config, write_jsonl

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("mode", ["embedding", "generative", "unified"])
def test_each_mode_lowers_its_loss(tiny_model_path, train_data, tmp_path, mode):
    final = train(tiny_config(tiny_model_path, train_data, tmp_path, mode=mode))
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == list(range(1, 31))
    step_keys = {
        "step",
        "loss",
        "loss_emb",
        "loss_gen",
        "kl_rag",
        "kl_anchor",
        "kl_chat",
        "lr",
        "grad_norm",
        "grad_norm_emb",
        "grad_norm_gen",
        "tokens",
        "truncated",
        "seconds",
    }
    assert set(log[0]) == step_keys | {"placement", "model"} and all(set(r) == step_keys for r in log[1:])
    # What ran is recorded resolved, on the machine-independent placement the tests pin (cpu, float32, 1 thread).
    assert {k: log[0]["placement"][k] for k in ("device", "dtype", "threads")} == {
        "device": "cpu", "dtype": "float32", "threads": 1}  # fmt: skip
    assert log[0]["model"] == GritModel.load(tiny_model_path).identity.id
    recorded = json.loads((tmp_path / "train_config.json").read_text())
    assert (recorded["device"], recorded["dtype"], recorded["threads"]) == ("cpu", "float32", 1)
    assert TrainConfig.from_file(tmp_path / "train_config.json").dtype == "float32"  # still a config that loads
    assert all((r["grad_norm_emb"] is None) == (mode != "unified") for r in log)
    assert log[0]["lr"] == 0 and log[1]["lr"] == pytest.approx(3e-3)  # one warm-up step, then linear decay
    kinds = {"embedding": ["loss_emb"], "generative": ["loss_gen"], "unified": ["loss_emb", "loss_gen"]}[mode]
    for key in kinds:
        first, last = mean([r[key] for r in log[:5]]), mean([r[key] for r in log[-5:]])
        assert last < 0.85 * first, f"{key}: {first:.3f} -> {last:.3f}"
    for key in {"loss_emb", "loss_gen"} - set(kinds):
        assert all(r[key] is None for r in log)
    assert final == tmp_path / "final" and (tmp_path / "checkpoint-30").is_dir()
    if mode == "unified":  # every weight of the model moved (embeddings, every layer, final norm)
        before, after = weights(tiny_model_path), weights(final)
        unchanged = [name for name in before if torch.equal(before[name], after[name])]
        assert not unchanged


def test_lora_trains_only_the_adapters_and_the_merged_model_loads(tiny_model_path, tiny_grit, train_data, tmp_path):
    cfg = tiny_config(tiny_model_path, train_data, tmp_path, "lora.enabled=true", "lora.r=4", max_steps=8, lr=1e-2)
    final = train(cfg)
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert (tmp_path / "checkpoint-8" / "adapter" / "adapter_config.json").is_file()
    # The merged model: the target layers changed, everything else is the base model bit for bit.
    before, after = weights(tiny_model_path), weights(final)
    assert before.keys() == after.keys()
    targets = tuple(cfg.lora.target_modules)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == (name.removesuffix(".weight").endswith(targets)), name
    model = GritModel.load(final, dtype="float32", device="cpu")
    texts = ["A man is playing a guitar.", "Two dogs run in the snow."]
    trained, base = model.encode(texts), tiny_grit.encode(texts)
    assert trained.shape == base.shape and not np.allclose(trained, base, atol=1e-4)
    # The adapter folder alone opens too (merged into its recorded base at load) and gives the same model.
    from_adapter = GritModel.load(tmp_path / "adapter", dtype="float32", device="cpu")
    assert np.allclose(from_adapter.encode(texts), trained, atol=1e-5)


def test_trained_folders_remember_embedding_settings_and_their_base(tiny_model_path, train_data, tmp_path):
    overrides = ("lora.enabled=true", "lora.r=4", "pooling=last", "attention=causal")
    final = train(tiny_config(tiny_model_path, train_data, tmp_path, *overrides, max_steps=2, lr=1e-2))
    for folder in (final, tmp_path / "adapter"):
        model = GritModel.load(folder, dtype="float32", device="cpu")
        assert (model.pooling, model.bidirectional) == ("last", False), folder
    assert GritModel.load(final, device="cpu", pooling="mean", bidirectional=True).bidirectional  # explicit wins
    # peft records the base as a path on the training machine; grit's own record (train_config.json) is used
    # first, so an adapter still opens where that path does not exist.
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "/gone/elsewhere"}))
    assert GritModel.load(tmp_path / "adapter", dtype="float32", device="cpu").pooling == "last"


@pytest.mark.skipif(not (SHARED_DATA / "contrastive").is_dir(), reason="needs ../shared/data")
def test_unified_training_on_rows_of_the_shared_data(tiny_model_path, tmp_path):
    def head(path: Path, n: int) -> list[dict]:
        return [json.loads(line) for line in itertools.islice(path.open(), n)]

    emb = write_jsonl(tmp_path / "nli.jsonl", head(SHARED_DATA / "contrastive" / "nli_triplets.jsonl", 16))
    gen = write_jsonl(tmp_path / "gsm8k.jsonl", head(SHARED_DATA / "generative" / "gsm8k_train.jsonl", 8))
    out = tmp_path / "run"
    train(tiny_config(tiny_model_path, (emb, gen), out, "data.generative_max_length=256", max_steps=20))
    log = read_log(out)
    for key in ("loss_emb", "loss_gen"):
        assert mean([r[key] for r in log[-4:]]) < mean([r[key] for r in log[:4]]), key


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    cfg = TrainConfig.from_file(path)
    assert cfg.model is None and cfg.max_steps > 0
    if SHARED_DATA.is_dir():  # their data paths are relative to the project root, where users run them
        root = CONFIGS.parent
        for file in cfg.data.embedding_files + cfg.data.generative_files:
            assert (root / file).is_file(), file


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_the_lora_example_config_trains_the_default_model(tmp_path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)  # the configs' data paths are relative to the project root
    smaller = ["max_steps=2", "data.embedding_batch_size=4", "gradcache_chunk_size=2", "data.generative_batch_size=2"]
    cfg = TrainConfig.from_file(CONFIGS / "toy-unified-lora.yaml", [f"output_dir={tmp_path}", *smaller])
    final = train(cfg)
    log = read_log(tmp_path)
    assert len(log) == 2 and all(r["loss_emb"] > 0 and r["loss_gen"] > 0 for r in log)
    model = GritModel.load(final, dtype="float32", device="cpu")
    assert model.encode("A man is playing a guitar.").shape == (576,)
    assert (tmp_path / "adapter" / "train_config.json").is_file()


def test_cli_trains_resumes_and_plots(tiny_model_path, train_data, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    emb, gen = train_data
    data = f"data: {{embedding_files: [{emb}], generative_files: [{gen}], embedding_batch_size: 4}}"
    config.write_text(f"model: {tiny_model_path}\nmax_steps: 3\nsave_every: 2\n{data}\n")
    out = tmp_path / "run"
    assert cli_main(["train", str(config), f"output_dir={out}", "lr=1e-3", "data.generative_batch_size=2"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "final")
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-3"]
    assert json.loads((out / "train_config.json").read_text())["lr"] == 1e-3
    # The same command again finds the finished run and only writes the final model again.
    assert cli_main(["train", str(config), f"output_dir={out}", "lr=1e-3", "data.generative_batch_size=2"]) == 0
    assert len(read_log(out)) == 3
    assert cli_main(["plot-loss", str(out)]) == 0
    png = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert png == out / "loss.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["train", str(config), "lr=-1"]) == 2  # a bad option is a one-line error, not a traceback
    assert "lr must be > 0" in capsys.readouterr().err


def test_restart_with_resume_false_refuses_to_mix_runs(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    cfg = TrainConfig(mode="embedding", output_dir=str(tmp_path), resume=False, data=DataConfig(["e.jsonl"]))
    with pytest.raises(ValueError, match="resume is false"):
        find_resume(cfg, tmp_path)
    cfg.resume = True
    assert find_resume(cfg, tmp_path) == tmp_path / "checkpoint-4"
