"""tools/ship_adapter.py: what it writes into the package folder, and the RAG default it can set."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from grit.identity import TRAIN_CONFIG, TRAINING_RECORD, trained_cache_source
from grit.loading import ADAPTER_CONFIG

TOOL = Path(__file__).resolve().parents[1] / "tools" / "ship_adapter.py"


@pytest.fixture(scope="module")
def ship():
    spec = importlib.util.spec_from_file_location("ship_adapter", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ship


def finished_run(tmp_path: Path, record: dict | None) -> Path:
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    save_file({"lora_A": torch.randn(4, 8)}, adapter / "adapter_model.safetensors")
    (adapter / ADAPTER_CONFIG).write_text(json.dumps({"r": 4, "base_model_name_or_path": "/local/path"}))
    (adapter / TRAIN_CONFIG).write_text(json.dumps({"model": None, "pooling": "mean"}))
    if record is not None:
        (adapter / TRAINING_RECORD).write_text(json.dumps(record))
    return adapter.parent


CACHE_AWARE = {"examples": {"cached_rag": 7}, "rag_cache_attention": "bidirectional"}


@pytest.mark.parametrize("chosen, expected", [(None, "bidirectional"), ("causal", "causal")])
def test_ships_bf16_weights_the_hub_base_and_the_rag_default(ship, tmp_path, chosen, expected):
    target = ship(finished_run(tmp_path, CACHE_AWARE), tmp_path / "shipped", rag_cache_source=chosen)
    assert load_file(target / "adapter_model.safetensors")["lora_A"].dtype == torch.bfloat16
    assert json.loads((target / ADAPTER_CONFIG).read_text())["base_model_name_or_path"].startswith("HuggingFaceTB/")
    record = json.loads((target / TRAINING_RECORD).read_text())
    assert record["rag_cache_attention"] == "bidirectional" and record.get("rag_cache_source") == chosen
    assert trained_cache_source(target / TRAINING_RECORD) == expected


def test_a_rag_default_without_a_training_record_is_refused(ship, tmp_path):
    with pytest.raises(ValueError, match="no grit_training.json"):
        ship(finished_run(tmp_path, None), tmp_path / "shipped", rag_cache_source="causal")
