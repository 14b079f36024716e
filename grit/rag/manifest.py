"""What an index folder says about itself (manifest.json), and which model made its vectors.

Vectors from two models (or one model with another pooling or prompt format) live in unrelated spaces: searching one
with the other returns confident nonsense. So an index records the identity of its encoder (``grit.identity``:
the folder name plus a digest of its config, tokenizer and weight files; a copy or move keeps it, fine-tuning
changes it) and its embedding settings, and refuses any other model. It also records where its vectors were
computed (``placements``: device, dtype and threads of every session that added vectors), for the reader of a
number; a float32 index searched from bfloat16 is allowed, only the model must be the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import grit
from grit.loading import recover_folders

FORMAT = "grit-index"
FORMAT_VERSION = 2  # 2: model ids from grit.identity (content digests), placements recorded
MANIFEST = "manifest.json"


class IndexFormatError(ValueError):
    """A folder that is not a grit index, or one written by an incompatible grit."""


class ModelMismatchError(ValueError):
    """The index was built with another model (or other embedding settings) than the one given."""


def encoder_identity(encoder) -> dict:
    """``{"id", "path", "settings"}`` for a GritModel (its ``identity`` and ``embedding_settings()``) or any encoder
    with a ``model_id`` string."""
    if isinstance(getattr(encoder, "model_id", None), str):
        return {"id": encoder.model_id, "path": None, "settings": {}}
    identity = getattr(encoder, "identity", None)
    if identity is None or not callable(getattr(encoder, "embedding_settings", None)):
        raise TypeError(
            f"{type(encoder).__name__} has neither an `identity` (grit.identity.ModelIdentity) with "
            "`embedding_settings()` nor a `model_id` string; the index needs one to refuse vectors from other models"
        )
    return {"id": identity.id, "path": identity.path, "settings": encoder.embedding_settings()}


def encoder_placement(encoder) -> dict | None:
    """Device, dtype, weights and threads the encoder runs with (``Placement.as_dict``), or None when it does not
    say."""
    placement = getattr(encoder, "placement", None)
    if placement is None:
        return None
    return {k: v for k, v in placement.as_dict().items() if k in ("device", "dtype", "weights", "threads")}


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
        recover_folders(folder.parent)  # a save killed between its two renames: the old index comes back
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
