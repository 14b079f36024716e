"""TrainConfig: files, overrides with type conversion, validation that names the bad value, JSON round trip."""

import json

import pytest

from grit.train.config import CONFIG_FILE, DataConfig, LoraConfig, TrainConfig

YAML = """
model: null
mode: unified
lr: 1e-4            # YAML reads this as a string; it is converted to float
data:
  embedding_files: [nli.jsonl]
  generative_files: [gsm8k.jsonl, p3.jsonl.gz]
  embedding_batch_size: 8
lora:
  enabled: true
  target_modules: [q_proj, v_proj]
"""


def unified(**kwargs) -> TrainConfig:
    data = DataConfig(embedding_files=["e.jsonl"], generative_files=["g.jsonl"])
    return TrainConfig(data=data, **kwargs)


def test_from_yaml_with_nested_groups(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(YAML)
    cfg = TrainConfig.from_file(path)
    assert cfg.model is None and cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.data.generative_files == ["gsm8k.jsonl", "p3.jsonl.gz"] and cfg.data.embedding_batch_size == 8
    assert cfg.lora == LoraConfig(enabled=True, target_modules=["q_proj", "v_proj"])
    assert cfg.temperature == 0.02 and cfg.loss_gen_type == "mixed" and cfg.loss_gen_factor == 1.0  # GritLM


def test_overrides_are_converted_to_the_field_type(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(YAML)
    cfg = TrainConfig.from_file(
        path,
        overrides=[
            "lr=3e-5",
            "lora.r=8",
            "symmetric=true",
            "model=models/tiny",
            "data.embedding_files=a.jsonl, b.jsonl.gz",
            'lora.target_modules=["q_proj"]',
            "--max_steps=100",
            "data.skip_bad_lines=yes",
        ],
    )
    assert (cfg.lr, cfg.lora.r, cfg.symmetric, cfg.model, cfg.max_steps) == (3e-5, 8, True, "models/tiny", 100)
    assert cfg.data.embedding_files == ["a.jsonl", "b.jsonl.gz"] and cfg.lora.target_modules == ["q_proj"]
    assert cfg.data.skip_bad_lines is True
    assert TrainConfig.from_file(path, overrides=["model=none"]).model is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mode=both"], "mode must be one of 'embedding', 'generative', 'unified'; got 'both'"),
        (["scheduler=step"], "scheduler must be one of 'linear', 'cosine', 'constant'"),
        (["pooling=max"], "pooling must be one of 'mean', 'weighted_mean', 'last', 'cls'"),
        (["lora.r=abc"], "lora.r must be int, got 'abc'"),
        (["lora.r=0"], "lora.r must be >= 1, got 0"),
        (["symmetric=maybe"], "symmetric must be bool"),
        (["learning_rate=1e-4"], "unknown option learning_rate"),
        (["lora.rank=4"], "unknown option lora.rank"),
        (["lr.x=1"], "lr is not a group"),
        (["lr"], "key=value"),
        (["temperature=0"], "temperature must be > 0, got 0.0"),
        (["data.embedding_files=train.csv"], "'train.csv' is not a .jsonl or .jsonl.gz file"),
        (["warmup_ratio=1.5"], r"warmup_ratio must be in \[0, 1\), got 1.5"),
        (["max_steps=0", "epochs=0"], "epochs must be > 0"),
        (["data.generative_files="], "mode='unified' needs data.generative_files, got none"),
        (["mode=generative", "gradcache_chunk_size=4"], "gradcache_chunk_size is for the contrastive loss"),
        (["gradcache_chunk_size=8"], "must be smaller than data.embedding_batch_size=8"),
        (["data.embedding_batch_size=1", "data.num_hard_negatives=0"], "no negatives"),
    ],
)
def test_bad_values_are_named(tmp_path, overrides, message):
    path = tmp_path / "train.yaml"
    path.write_text(YAML)
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_file(path, overrides=overrides)


def test_each_mode_needs_its_data():
    with pytest.raises(ValueError, match="mode='embedding' needs data.embedding_files"):
        TrainConfig(mode="embedding", data=DataConfig(generative_files=["g.jsonl"]))
    with pytest.raises(ValueError, match="mode='generative' needs data.generative_files"):
        TrainConfig(mode="generative", data=DataConfig(embedding_files=["e.jsonl"]))
    assert TrainConfig(mode="generative", data=DataConfig(generative_files=["g.jsonl"])).mode == "generative"


def test_unused_data_is_reported(caplog):
    TrainConfig(mode="embedding", data=DataConfig(embedding_files=["e.jsonl"], generative_files=["g.jsonl"]))
    assert "data.generative_files are not used" in caplog.text


def test_save_and_load_round_trip(tmp_path):
    cfg = unified(lr=1e-3, lora=LoraConfig(enabled=True, r=4), symmetric=True)
    path = cfg.save(tmp_path / "run")
    assert path == tmp_path / "run" / CONFIG_FILE
    assert json.loads(path.read_text())["lora"]["r"] == 4
    assert TrainConfig.from_file(path) == cfg


def test_instances_do_not_share_list_defaults():
    a, b = unified(), unified()
    a.lora.target_modules.append("lm_head")
    assert "lm_head" not in b.lora.target_modules


def test_every_option_has_a_type_default_and_help():
    options = TrainConfig.options()
    names = [name for name, _, _, _ in options]
    assert {"lr", "lora.r", "data.num_hard_negatives", "gradcache_chunk_size", "data.skip_bad_lines"} <= set(names)
    assert all(help_text for _, _, _, help_text in options), [n for n, _, _, h in options if not h]
    assert dict((n, t) for n, t, _, _ in options)["mode"] == "{embedding,generative,unified}"


def test_config_file_kind_is_checked(tmp_path):
    (tmp_path / "c.toml").write_text("")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.json"):
        TrainConfig.from_file(tmp_path / "c.toml")
    (tmp_path / "c.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        TrainConfig.from_file(tmp_path / "c.yaml")


def test_per_file_instructions_by_path_or_name_with_the_global_ones_as_fallback(tmp_path):
    files = ["data/nli.jsonl", "data/coco.jsonl.gz"]
    path = tmp_path / "train.yaml"
    path.write_text(
        "data:\n  embedding_files: [data/nli.jsonl, data/coco.jsonl.gz]\n  generative_files: [g.jsonl]\n"
        "  query_instruction: Retrieve\n  query_instructions:\n    coco.jsonl.gz: Retrieve a caption\n"
    )
    cfg = TrainConfig.from_file(path, overrides=['data.passage_instructions={"data/coco.jsonl.gz": "Same image"}'])
    assert cfg.data.instructions_for(files[0]) == ("Retrieve", "")
    assert cfg.data.instructions_for(files[1]) == ("Retrieve a caption", "Same image")
    with pytest.raises(ValueError, match="other.jsonl.*not one of data.embedding_files"):
        TrainConfig.from_file(path, overrides=['data.query_instructions={"other.jsonl": "x"}'])
    with pytest.raises(ValueError, match="must be a JSON dict"):
        TrainConfig.from_file(path, overrides=["data.query_instructions=[1]"])


def test_per_file_weights_name_every_file_and_come_in_file_order(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        "data:\n  embedding_files: [data/nli.jsonl, data/coco.jsonl.gz]\n  generative_files: [g.jsonl, h.jsonl]\n"
        "  embedding_weights:\n    data/coco.jsonl.gz: 1\n    nli.jsonl: 3.5\n"
    )
    cfg = TrainConfig.from_file(path)
    assert cfg.data.weights_for("embedding") == [3.5, 1.0] and cfg.data.weights_for("generative") is None
    cfg = TrainConfig.from_file(path, overrides=['data.generative_weights={"g.jsonl": 2, "h.jsonl": 1}'])
    assert cfg.data.weights_for("generative") == [2.0, 1.0]
    refused = {
        '{"g.jsonl": 2}': "gives no weight to 'h.jsonl'",
        '{"g.jsonl": 2, "h.jsonl": 0}': "weights must be numbers > 0",
        '{"g.jsonl": 2, "h.jsonl": -1}': "weights must be numbers > 0",
        '{"g.jsonl": 2, "h.jsonl": true}': "must be float, got True",
        '{"g.jsonl": 2, "other.jsonl": 1}': "other.jsonl.*not one of data.generative_files",
    }
    for value, match in refused.items():
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_file(path, overrides=[f"data.generative_weights={value}"])
    with pytest.raises(ValueError, match="weights must be numbers > 0"):
        TrainConfig.from_file(path, overrides=['data.embedding_weights={"nli.jsonl": "inf", "coco.jsonl.gz": 1}'])


def test_a_config_extends_another_and_overrides_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text(YAML)
    (tmp_path / "gpu.yaml").write_text("extends: base.yaml\nlr: 5e-4\ndata:\n  embedding_batch_size: 512\n")
    cfg = TrainConfig.from_file(tmp_path / "gpu.yaml", overrides=["max_steps=7"])
    assert (cfg.lr, cfg.max_steps, cfg.data.embedding_batch_size) == (5e-4, 7, 512)
    assert cfg.data.generative_files == ["gsm8k.jsonl", "p3.jsonl.gz"] and cfg.lora.enabled  # kept from base.yaml
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        TrainConfig.from_file(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        TrainConfig.from_file(tmp_path / "missing.yaml")
