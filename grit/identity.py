"""Which model this is: one ``ModelIdentity``, computed once when a model is loaded, from its files.

Everything that must not mix the outputs of two models keys on it: an index refuses vectors of another model
(rag/manifest.py), cached corpus embeddings and ``grit eval --resume`` reuse only the same model's results
(eval/cache.py, eval/run.py), the KV store only serves caches this model computed (rag/answer.py), a training run
resumes only on the base it started from, and the server names its model with it.

The digest covers what makes a model compute what it computes: its config, tokenizer and weight files (and, for a
LoRA adapter merged at load, the adapter's files plus the base model's digest). It is computed from the files, not
from the weights in memory, so it is cheap (``file_digest``: whole files up to 32 MiB; larger ones by size plus
samples spread over the file, ~6 MiB read for any size) and it survives a copy or move of the folder: the path is
recorded but not part of the identity. A full fine-tune rewrites every tensor and so every sample; an edit of a few
bytes in the middle of a large weight file could escape the samples, which is why what trains writes a new file
rather than patching one in place. A model changed in memory after loading keeps the identity of its files.

A folder grit wrote also records how its model embeds: ``grit train`` writes ``train_config.json`` (which base an
adapter belongs to, the pooling and attention it was trained with), ``GritModel.save_pretrained`` writes
``grit_config.json`` (pooling, attention, prompt format, named instructions, truncation). ``SavedSettings`` is the one
reader of both for the core modules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

WHOLE_FILE_BYTES = 32 << 20  # files up to this size are hashed whole (adapters, configs, tokenizers)
SAMPLES, SAMPLE_BYTES, END_BYTES = 64, 64 << 10, 1 << 20
TRAIN_CONFIG = "train_config.json"  # written by grit train into final/ and adapter/
SAVED_CONFIG = "grit_config.json"  # written by GritModel.save_pretrained
TRAINING_RECORD = "grit_training.json"  # written by grit train beside train_config.json: what the run trained on
IDENTITY_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "*.safetensors",
    "pytorch_model*.bin",
    "adapter_config.json",
    SAVED_CONFIG,
    "adapter_model.bin",
)


def file_digest(path: Path) -> str:
    """A content key for one file: sha256 of the whole file up to 32 MiB; above, of its size, first and last MiB
    and 64 blocks of 64 KiB spread evenly between them (hashing a multi-GB file at every start would be slow)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= WHOLE_FILE_BYTES:
            h.update(f.read())
        else:
            h.update(f.read(END_BYTES))
            span = size - 2 * END_BYTES - SAMPLE_BYTES
            for i in range(SAMPLES):
                f.seek(END_BYTES + span * i // (SAMPLES - 1))
                h.update(f.read(SAMPLE_BYTES))
            f.seek(size - END_BYTES)
            h.update(f.read(END_BYTES))
    return h.hexdigest()[:16]


def model_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in IDENTITY_FILES for p in folder.glob(pattern) if p.is_file()})


@dataclass(frozen=True)
class SavedSettings:
    """How a folder grit wrote embeds: from ``grit_config.json`` (``save_pretrained``) or ``train_config.json``
    (``grit train``). Fields a file does not set are None (the loader's defaults apply)."""

    base: str | None = None  # grit train: the model training started from (None: the default model)
    pooling: str | None = None
    attention: Literal["bidirectional", "causal"] | None = None
    format: dict[str, Any] | None = None  # grit.formats.PromptFormat fields
    prompts: dict[str, str] | None = None
    truncate_dim: int | None = None
    similarity_fn_name: str | None = None
    trained: bool = False  # from grit train's train_config.json (then ``base`` names the adapter's base)
    # The document caches RAG reads by default: "bidirectional" once the model was trained to read the embedding
    # pass's own states (cache-aware RAG rows, grit_training.json), else None (RAG's exact causal default)
    rag_cache_source: Literal["bidirectional", "causal"] | None = None

    @classmethod
    def read(cls, folder: Path) -> SavedSettings | None:
        """The settings grit recorded in ``folder``; None for any other folder. An unreadable file is an error: a
        model trained to embed one way must not silently embed another."""
        folder = Path(folder)
        for name, trained in ((SAVED_CONFIG, False), (TRAIN_CONFIG, True)):
            path = folder / name
            if not path.is_file():
                continue
            values = read_object(path)
            attention = values.get("attention", "bidirectional")
            if attention not in ("bidirectional", "causal"):
                raise ValueError(f"{str(path)!r}: attention must be 'bidirectional' or 'causal', got {attention!r}")
            if trained:
                source = trained_cache_source(folder / TRAINING_RECORD)
                return cls(values.get("model"), values.get("pooling", "mean"), attention, trained=True,
                           rag_cache_source=source)  # fmt: skip
            source = checked_cache_source(path, values.get("rag_cache_source"))
            fields = ("pooling", "format", "prompts", "truncate_dim", "similarity_fn_name")
            return cls(attention=attention, rag_cache_source=source, **{k: values.get(k) for k in fields})
        return None


def checked_cache_source(path: Path, source: Any) -> Literal["bidirectional", "causal"] | None:
    """``source`` as a recorded RAG cache source (None: not recorded), or a ValueError naming ``path``."""
    if source not in (None, "bidirectional", "causal"):
        raise ValueError(f"{str(path)!r}: rag_cache_source must be 'bidirectional' or 'causal', got {source!r}")
    return source


def read_object(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{str(path)!r} does not hold grit's settings (a JSON object)")
    return values


def training_record(examples: dict[str, int], rag_cache_attention: str) -> dict[str, Any]:
    """What ``grit train`` records of a run's data in ``grit_training.json``: examples of each kind it read, and,
    when it trained on cache-aware RAG rows, which document caches it taught the model to read."""
    cached = examples.get("cached_rag", 0) > 0
    return {"examples": examples, "rag_cache_attention": rag_cache_attention if cached else None}


def trained_cache_source(path: Path) -> Literal["bidirectional", "causal"] | None:
    """The cache source a training record makes RAG's default: "bidirectional" when the model learnt to read the
    embedding pass's states (cache-aware rows, bidirectional or mixed), "causal" for causal rows only.

    A record may name the default outright (``rag_cache_source``, written by ``tools/ship_adapter.py
    --rag-cache-source``): a model trained to read its free caches but measured to answer better from causal ones
    ships with the causal default, and the free caches stay one option away."""
    if not path.is_file():
        return None
    record = read_object(path)
    attention = record.get("rag_cache_attention")
    if attention not in (None, "bidirectional", "causal", "mixed"):
        raise ValueError(
            f"{str(path)!r}: rag_cache_attention must be bidirectional, causal or mixed, got {attention!r}"
        )
    chosen = checked_cache_source(path, record.get("rag_cache_source"))
    if chosen is not None:
        return chosen
    return None if attention is None else "causal" if attention == "causal" else "bidirectional"


@dataclass(frozen=True)
class ModelIdentity:
    """A model's name and content digest; ``id`` ("{name}-{digest}") is what caches, indexes and servers key on."""

    name: str  # the folder's name, for people
    digest: str  # over the model's files (and its base's digest, for an adapter)
    path: str  # where it was loaded from; not part of the identity
    base: str | None = None  # the base model's id, for a LoRA adapter merged in at load
    saved: SavedSettings | None = None  # how the folder says its model embeds (grit train, save_pretrained)

    @property
    def id(self) -> str:
        return f"{self.name}-{self.digest}"

    @classmethod
    def of(cls, folder: str | Path, base: ModelIdentity | None = None) -> ModelIdentity:
        """The identity of a model folder (an adapter folder with the identity of the base it is merged into)."""
        folder = Path(folder)
        files = model_files(folder)
        if not files:
            raise FileNotFoundError(f"{folder} holds no config, tokenizer or weight files to identify a model by")
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}:{file_digest(p)}\n".encode())
        if base is not None:
            h.update(f"base:{base.digest}\n".encode())
        saved = SavedSettings.read(folder)
        return cls(folder.name, h.hexdigest()[:16], str(folder.resolve()), base.id if base else None, saved)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "digest": self.digest, "path": self.path, "base": self.base}
