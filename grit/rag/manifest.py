"""What an index folder says about itself (manifest.json), and which model made its vectors.

Vectors from two models (or one model with another pooling or prompt format) live in unrelated spaces: searching one
with the other returns confident nonsense. So an index records the identity of its encoder and refuses any other.

A model folder's identity is its name plus a hash over its config, tokenizer and weight files (each hashed with
``grit.loading.file_fingerprint``: size plus first and last MiB, cheap even for GB-sized weights). Copying or moving
the folder keeps the identity; fine-tuning or changing the tokenizer changes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import grit
from grit.loading import file_fingerprint

FORMAT = "grit-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IDENTITY_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "*.safetensors",
    "pytorch_model*.bin",
)


class IndexFormatError(ValueError):
    """A folder that is not a grit index, or one written by an incompatible grit."""


class ModelMismatchError(ValueError):
    """The index was built with another model (or other embedding settings) than the one given."""


def model_id(folder: str | Path) -> str:
    """``"{folder name}-{12 hex}"``, stable across copies of the same model files."""
    folder = Path(folder)
    files = sorted({p for pattern in IDENTITY_FILES for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"{folder} holds no config, tokenizer or weight files to identify a model by")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{file_fingerprint(p)}\n".encode())
    return f"{folder.name}-{h.hexdigest()[:12]}"


def encoder_identity(encoder) -> dict:
    """``{"id", "path", "settings"}`` for a GritModel (identified by its folder) or any encoder with a ``model_id``
    string. ``settings`` holds what else changes the vectors: pooling, attention, prompt format."""
    if isinstance(getattr(encoder, "model_id", None), str):
        return {"id": encoder.model_id, "path": None, "settings": {}}
    path = getattr(encoder, "path", None)
    if path is None:
        raise TypeError(
            f"{type(encoder).__name__} has neither a `path` (model folder) nor a `model_id` string; the index needs "
            "one to refuse vectors from other models later"
        )
    settings = {}
    for name in ("pooling", "bidirectional", "format"):
        value = getattr(encoder, name, None)
        if value is not None:
            settings[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return {"id": model_id(path), "path": str(Path(path).resolve()), "settings": settings}


def check_same_model(stored: dict, current: dict, where: Path) -> None:
    """Raise ``ModelMismatchError`` naming both models (or the differing settings) when they are not the same."""
    if stored is None:  # saved by an Index made without an encoder: it holds no vectors, any model may fill it
        return
    if stored["id"] != current["id"]:
        raise ModelMismatchError(
            f"index {where} was built with model {stored['id']!r} (from {stored.get('path')}), but the model given "
            f"is {current['id']!r} (from {current.get('path')}); vectors of different models cannot be compared. "
            "Use the index's model or rebuild the index."
        )
    old, new = stored["settings"], current["settings"]
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        details = "; ".join(f"{k}: index {old.get(k)!r}, now {new.get(k)!r}" for k in differ)
        raise ModelMismatchError(
            f"index {where} was built with model {stored['id']!r} and other embedding settings ({details}); "
            "load the model with the index's settings or rebuild the index"
        )


def is_index_folder(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_manifest(folder: Path, manifest: dict) -> None:
    head = {"format": FORMAT, "format_version": FORMAT_VERSION, "grit_version": grit.__version__}
    (folder / MANIFEST).write_text(json.dumps(head | manifest, indent=2) + "\n")


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FileNotFoundError(f"index folder {str(folder)!r} does not exist")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexFormatError(f"{folder} is not a grit index: it has no {MANIFEST}") from None
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} does not describe a grit index (format is not {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has index format version {manifest.get('format_version')}, this grit "
            f"({grit.__version__}) reads version {FORMAT_VERSION}; rebuild the index"
        )
    return manifest
