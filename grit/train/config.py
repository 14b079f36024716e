"""Training configuration: one tree of typed dataclasses, read from YAML or JSON, overridden from the command line,
saved as JSON next to the checkpoints.

    cfg = TrainConfig.from_file("train.yaml", overrides=["lr=1e-4", "lora.r=8", "data.embedding_files=a.jsonl"])
    cfg.save("runs/x")  # runs/x/train_config.json, which TrainConfig.from_file reads back

Every field has a type, a default and ``metadata={"help": ...}`` (``TrainConfig.options()`` lists them for a CLI).
Values are checked in ``__post_init__``; an error names the field and the bad value. Defaults follow GritLM
(Muennighoff et al. 2024) where it has one: temperature 0.02, one hard negative, linear schedule, LoRA r=16 alpha=64.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

from grit.identity import TRAIN_CONFIG
from grit.pooling import Pooling

if TYPE_CHECKING:  # grit.hardware imports torch; a config (and `grit train --help`) does not need it
    from grit.hardware import Placement

log = logging.getLogger(__name__)

CONFIG_FILE = TRAIN_CONFIG  # one name: GritModel.load reads what the trainer writes
DATA_SUFFIXES = (".jsonl", ".jsonl.gz")


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a help text; list and dataclass defaults get a fresh copy per instance."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def check_choices(obj: Any, prefix: str = "") -> None:
    """Every ``Literal`` field of ``obj`` holds one of its choices; the error lists them."""
    for name, tp in get_type_hints(type(obj)).items():
        if get_origin(tp) is Literal and getattr(obj, name) not in get_args(tp):
            choices = ", ".join(repr(c) for c in get_args(tp))
            raise ValueError(f"{prefix}{name} must be one of {choices}; got {getattr(obj, name)!r}")


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class LoraConfig:
    """Low-rank adapters (peft). GritLM's values: r=16, alpha=64, dropout=0.1."""

    enabled: bool = opt(False, "Train LoRA adapters instead of all weights.")
    r: int = opt(16, "Rank of the adapter matrices.")
    alpha: int = opt(64, "Scaling numerator; the update is scaled by alpha / r.")
    dropout: float = opt(0.1, "Dropout on the adapter input, in [0, 1).")
    target_modules: list[str] = opt(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Names of the linear layers that get adapters (Llama/Mistral/Qwen2 naming: attention and MLP).",
    )
    init_from: str | None = opt(
        None,
        "An adapter folder grit train wrote (its adapter/, or a shipped model folder) to start the adapters from "
        "instead of fresh ones: a second stage continues that training. Its base, r, alpha and modules must match.",
    )

    def __post_init__(self) -> None:
        check(self.r >= 1, f"lora.r must be >= 1, got {self.r}")
        check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, f"lora.dropout must be in [0, 1), got {self.dropout}")
        check(bool(self.target_modules), "lora.target_modules must name at least one module, got []")
        check(self.init_from is None or bool(str(self.init_from)), "lora.init_from must be a folder or None, got ''")


def per_file(table: dict, path: str, default):
    """``table``'s entry for data file ``path``: keyed by the path as listed, or by the file's name alone."""
    return table.get(str(path), table.get(Path(path).name, default))


@dataclass
class DataConfig:
    """Training files (GritLM JSON lines, one data set per file), batch sizes and token limits."""

    embedding_files: list[str] = opt([], 'Contrastive files, {"query", "pos": [...], "neg": [...]} per line.')
    generative_files: list[str] = opt([], 'Generative files, {"text": [user, assistant, ...]} per line.')
    embedding_batch_size: int = opt(32, "Queries per batch over all processes, from one file (in-batch negatives).")
    generative_batch_size: int = opt(4, "Conversations per generative batch over all processes.")
    num_hard_negatives: int = opt(1, "Hard negatives per query (GritLM train_group_size - 1).")
    negatives_from_other_rows: bool = opt(
        True,
        "Fill missing hard negatives with passages of other rows of the same file. False: files whose rows have no "
        "negatives train on in-batch negatives alone (a random other row's passage is one more in-batch negative, "
        "at the cost of embedding it).",
    )
    query_max_length: int = opt(256, "Tokens per query, instruction and format included; longer ones are cut.")
    passage_max_length: int = opt(512, "Tokens per passage, instruction and format included; longer ones are cut.")
    generative_max_length: int = opt(1024, "Tokens per conversation, chat format included; longer ones are cut.")
    rag_passages: int = opt(
        3,
        "Documents per cache-aware RAG row (passage-QA rows in generative_files): its own passage and others' as "
        "distractors, each cut at passage_max_length, laid out as RAG reads them from cache.",
    )
    rag_cache_attention: Literal["bidirectional", "causal", "mixed"] = opt(
        "bidirectional",
        "How a cache-aware row's documents are computed: as the embedding pass (bidirectional, the free caches), "
        "causally, or mixed (either, per row), so the model learns to read that cache source.",
    )
    rag_distill: float = opt(
        0.0,
        "Weight of a self-distillation term on cache-aware rows (0: off): the KL divergence from the model's own "
        "full causal reading of the row (no gradient) to its reading of the separately computed documents, over "
        "every question and answer token, a dense signal beside the answer's few labelled tokens.",
    )
    rag_teacher: Literal["self", "start"] = opt(
        "self",
        "The teacher of data.rag_distill: 'self' is the model being trained, whose full reading moves with it (both "
        "readings can then agree by leaning on the documents less); 'start' is the model as the run started (the "
        "base with lora.init_from's adapter, or the plain base), kept frozen as a second adapter (needs LoRA).",
    )
    rag_anchor: float = opt(
        0.0,
        "Weight of a KL term holding the cache-aware rows' full causal reading (documents, question and answer in "
        "one pass, as a full prefill and cache='none' read them) at the model as the run started (a frozen copy of "
        "lora.init_from's adapter, needs LoRA): teaching the separate reading moved the full one too, towards terse "
        "answers that lose a passage's facts. One more forward and backward of the generative rows a step.",
    )
    rag_answer_loss: bool = opt(
        True,
        "Train cache-aware rows' answers with the next-token loss. False leaves those rows to data.rag_distill "
        "alone: the model learns to read separately computed documents as it reads one full prefill, and its "
        "answers stay its own (the extractive answers' loss taught short spans that override a passage's facts).",
    )
    chat_distill: float = opt(
        0.0,
        "Weight of a KL term on chat rows (0: off): from the model as the run started (a frozen copy of "
        "lora.init_from's adapter, needs LoRA) to the trained model, over every answer token. It holds a second "
        "stage's chat where it was, so the stage adds what its other terms teach (reading separate caches) without "
        "drifting its answers (more of the same chats at a fresh learning rate made them terser).",
    )
    chat_answer_loss: bool = opt(
        True,
        "Train chat rows' answers with the next-token loss. False leaves chats to data.chat_distill alone: they "
        "then keep the starting model's answers instead of fitting their own references further.",
    )
    pack: bool = opt(
        True,
        "Pack several texts or conversations into one row of each forward pass (each attends only to itself, from "
        "position 0), so padding is not computed; false pads every batch to its longest text.",
    )
    skip_bad_lines: bool = opt(False, "Skip malformed lines (counted and logged) instead of stopping at the first.")
    query_instruction: str = opt(
        "",
        "Instruction for the queries of rows that have none (GritLM's files carry one per row; many others do not).",
    )
    passage_instruction: str = opt("", "Instruction for passages that have none (GritLM: none for asymmetric tasks).")
    query_instructions: dict[str, str] = opt(
        {},
        "Per-file query_instruction: {file: instruction}, the file as listed in embedding_files or its name alone "
        "(each task its own instruction, as GritLM's training data has).",
    )
    passage_instructions: dict[str, str] = opt(
        {}, "Per-file passage_instruction, keyed like query_instructions (symmetric tasks: the query's instruction)."
    )
    embedding_weights: dict[str, float] = opt(
        {},
        "Share of the contrastive batches per file: {file: weight}, keyed like query_instructions, naming every file "
        "(batch shares are weight / sum). Empty: in proportion to each file's rows.",
    )
    generative_weights: dict[str, float] = opt(
        {}, "Share of the generative chats per file, as embedding_weights (keyed by data.generative_files)."
    )
    min_answer_words: int = opt(
        0, "Leave out generative chats whose answers all have fewer words (label-style targets teach terse chat)."
    )
    exclude_heldout: bool = opt(
        False, "Leave out the rows grit's evaluation holds out (grit.splits), to train on files it also scores."
    )

    @property
    def keeps_start(self) -> bool:
        """Whether a run keeps the model as it started, frozen, as a distillation teacher (grit.train.build)."""
        return self.rag_teacher == "start" or self.rag_anchor > 0 or self.chat_distill > 0

    def instructions_for(self, path: str) -> tuple[str, str]:
        """(query, passage) instruction for the rows of embedding file ``path`` that carry none."""
        return (
            per_file(self.query_instructions, path, self.query_instruction),
            per_file(self.passage_instructions, path, self.passage_instruction),
        )

    def weights_for(self, kind: Literal["embedding", "generative"]) -> list[float] | None:
        """Sampling weight of each ``{kind}_files`` entry, in order; None for size-proportional sampling."""
        table = getattr(self, f"{kind}_weights")
        return [per_file(table, path, None) for path in getattr(self, f"{kind}_files")] if table else None

    def __post_init__(self) -> None:
        check_choices(self, "data.")
        for name in ("embedding_files", "generative_files"):
            for path in getattr(self, name):
                check(
                    str(path).endswith(DATA_SUFFIXES),
                    f"data.{name}: {str(path)!r} is not a .jsonl or .jsonl.gz file",
                )
        for name in ("embedding_batch_size", "generative_batch_size"):
            check(getattr(self, name) >= 1, f"data.{name} must be >= 1, got {getattr(self, name)}")
        check(0 <= self.rag_distill < math.inf, f"data.rag_distill must be >= 0, got {self.rag_distill}")
        check(
            self.rag_answer_loss or self.rag_distill > 0,
            "data.rag_answer_loss=false needs data.rag_distill > 0, else cache-aware rows train nothing",
        )
        check(0 <= self.rag_anchor < math.inf, f"data.rag_anchor must be >= 0, got {self.rag_anchor}")
        check(0 <= self.chat_distill < math.inf, f"data.chat_distill must be >= 0, got {self.chat_distill}")
        check(
            self.chat_answer_loss or self.chat_distill > 0,
            "data.chat_answer_loss=false needs data.chat_distill > 0, else chat rows train nothing",
        )
        for name, files in (
            ("query_instructions", "embedding_files"),
            ("passage_instructions", "embedding_files"),
            ("embedding_weights", "embedding_files"),
            ("generative_weights", "generative_files"),
        ):
            paths = getattr(self, files)
            names = {str(p) for p in paths} | {Path(p).name for p in paths}
            unknown = sorted(set(getattr(self, name)) - names)
            check(not unknown, f"data.{name}: {unknown[0] if unknown else ''!r} is not one of data.{files}")
        for kind in ("embedding", "generative"):
            table = getattr(self, f"{kind}_weights")
            for key, w in table.items():
                check(isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w > 0,
                      f"data.{kind}_weights: {key!r} has weight {w!r}; weights must be numbers > 0 "
                      f"(leave a file out of data.{kind}_files to not train on it)")  # fmt: skip
            if table:
                missing = [p for p in getattr(self, f"{kind}_files") if per_file(table, p, None) is None]
                check(not missing, f"data.{kind}_weights gives no weight to {str(missing[0]) if missing else ''!r}; "
                                   f"name every file of data.{kind}_files, or none")  # fmt: skip
        check(self.min_answer_words >= 0, f"data.min_answer_words must be >= 0, got {self.min_answer_words}")
        check(self.num_hard_negatives >= 0, f"data.num_hard_negatives must be >= 0, got {self.num_hard_negatives}")
        check(self.rag_passages >= 1, f"data.rag_passages must be >= 1, got {self.rag_passages}")
        for name in ("query_max_length", "passage_max_length", "generative_max_length"):
            check(getattr(self, name) >= 2, f"data.{name} must be >= 2, got {getattr(self, name)}")


@dataclass
class TrainConfig:
    """Everything one training run needs. ``mode`` picks the losses: contrastive, next-token, or both (GRIT)."""

    model: str | None = opt(None, "Hugging Face folder or .gguf file; None for the default model.")
    mode: Literal["embedding", "generative", "unified"] = opt("unified", "Which losses to train.")
    output_dir: str = opt("runs/grit", "Checkpoints, logs and train_config.json go here.")
    seed: int = opt(0, "Seed for data order, negative sampling and initialisation.")
    device: str = opt(
        "auto",
        "auto | cpu | cuda | cuda:N; auto: $GRIT_DEVICE, else the first GPU if any (under torchrun: each "
        "process's LOCAL_RANK GPU). train_config.json records the resolved one.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "Compute dtype; auto: $GRIT_DTYPE, else the fastest native one (grit.hardware). Recorded resolved."
    )
    threads: int = opt(0, "CPU threads; 0: $GRIT_THREADS, else torch's default. Recorded resolved.")
    data: DataConfig = opt(DataConfig, "Data files, batch sizes and lengths.")
    lora: LoraConfig = opt(LoraConfig, "LoRA adapters.")
    # --- embedding ---
    pooling: Pooling = opt("mean", "How token states become one vector (over text tokens only).")
    attention: Literal["bidirectional", "causal"] = opt("bidirectional", "Attention when embedding (GRIT).")
    temperature: float = opt(0.02, "Contrastive softmax temperature; scores are cos / temperature (GritLM: 0.02).")
    symmetric: bool = opt(False, "Add the passage-to-query direction to the contrastive loss (mean of both).")
    # --- generation ---
    loss_gen_factor: float = opt(1.0, "Weight of the next-token loss in the sum with the contrastive loss.")
    loss_gen_type: Literal["mixed", "token"] = opt(
        "mixed", "Next-token loss averaging (GritLM): mixed = mean over the batch's tokens; token = sum / batch size"
    )
    # --- optimisation ---
    lr: float = opt(2e-5, "Peak learning rate (AdamW).")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = opt(1.0, "Clip the gradient norm to this; 0 turns clipping off.")
    clip_per_loss: bool = opt(
        False,
        "Unified: clip the contrastive and the next-token gradient to max_grad_norm each, then add them (the "
        "contrastive one can be 100x larger and would otherwise take nearly all of one shared clip).",
    )
    scheduler: Literal["linear", "cosine", "constant"] = opt("linear", "Learning-rate decay after warmup.")
    warmup_steps: int = opt(0, "Linear warmup steps; > 0 wins over warmup_ratio.")
    warmup_ratio: float = opt(0.03, "Warmup as a fraction of all optimizer steps, in [0, 1) (GritLM: 0.03).")
    max_steps: int = opt(0, "Optimizer steps to train; > 0 wins over epochs.")
    epochs: float = opt(1.0, "Passes over the data (of the embedding data in unified mode) when max_steps is 0.")
    gradient_accumulation: int = opt(1, "Batches whose gradients are summed before each optimizer step.")
    gradcache_chunk_size: int = opt(0, "GradCache: embed the contrastive batch in chunks of this many; 0 = off.")
    # --- bookkeeping ---
    log_every: int = opt(10, "Log losses every this many steps; 0 = never.")
    eval_every: int = opt(0, "Evaluate every this many steps; 0 = never.")
    save_every: int = opt(500, "Save a checkpoint every this many steps; 0 = only at the end.")
    keep_checkpoints: int = opt(2, "How many of the newest checkpoints to keep in output_dir; 0 keeps all.")
    resume: bool = opt(True, "Continue from the newest checkpoint in output_dir when there is one.")

    def __post_init__(self) -> None:
        check_choices(self)
        check(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device).strip().lower()) is not None,
            f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        check(self.model is None or bool(str(self.model)), "model must be a path or None, got ''")
        check(bool(self.output_dir), "output_dir must not be empty")
        self.check_data()
        check(self.lora.init_from is None or self.lora.enabled, "lora.init_from needs lora.enabled=true")
        for setting, on in (("data.rag_teacher=start", self.data.rag_teacher == "start"),
                            ("data.rag_anchor", self.data.rag_anchor > 0),
                            ("data.chat_distill", self.data.chat_distill > 0)):  # fmt: skip
            check(not on or self.lora.enabled,
                  f"{setting} needs lora.enabled=true (the starting model is kept as a frozen adapter)")  # fmt: skip
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(self.loss_gen_factor >= 0, f"loss_gen_factor must be >= 0, got {self.loss_gen_factor}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        check(self.max_steps > 0 or self.epochs > 0, f"epochs must be > 0 when max_steps is 0, got {self.epochs}")
        check(self.gradient_accumulation >= 1, f"gradient_accumulation must be >= 1, got {self.gradient_accumulation}")
        for name in ("log_every", "eval_every", "save_every", "keep_checkpoints"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        self.check_gradcache()

    def check_data(self) -> None:
        """Each mode needs its kind of data; data the mode does not use is reported, not silently dropped."""
        d = self.data
        needs = {"embedding": ("embedding",), "generative": ("generative",), "unified": ("embedding", "generative")}
        for kind in needs[self.mode]:
            check(
                bool(getattr(d, f"{kind}_files")),
                f"mode={self.mode!r} needs data.{kind}_files, got none",
            )
        for kind in ("embedding", "generative"):
            if kind not in needs[self.mode] and getattr(d, f"{kind}_files"):
                log.warning("mode=%r: data.%s_files are not used", self.mode, kind)
        if self.mode != "generative":
            check(
                d.embedding_batch_size > 1 or (d.num_hard_negatives > 0 and d.negatives_from_other_rows),
                "data.embedding_batch_size=1 with data.num_hard_negatives=0 (or data.negatives_from_other_rows=false, "
                "for files without negatives) leaves the contrastive loss no negatives",
            )

    def check_gradcache(self) -> None:
        size = self.gradcache_chunk_size
        check(size >= 0, f"gradcache_chunk_size must be >= 0, got {size}")
        if size:
            check(self.mode != "generative", "gradcache_chunk_size is for the contrastive loss; mode is 'generative'")
            check(
                size < self.data.embedding_batch_size,
                f"gradcache_chunk_size={size} must be smaller than data.embedding_batch_size="
                f"{self.data.embedding_batch_size} to have any effect",
            )

    # --- reading and writing ---------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Build from nested dicts (as read from YAML/JSON), after applying ``key.sub=value`` overrides."""
        values = apply_overrides(values, overrides)
        return build(cls, values)

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Read a ``.yaml``/``.yml`` or ``.json`` file; ``overrides`` as ``["lr=1e-4", "lora.r=8"]``."""
        return cls.from_dict(read_values(Path(path)), overrides)

    def resolved(self, placement: Placement) -> TrainConfig:
        """This config with device, dtype and threads as they run (no "auto"): what train_config.json records."""
        from grit.hardware import dtype_name

        return dataclasses.replace(
            self, device=str(placement.device), dtype=dtype_name(placement.dtype), threads=placement.threads
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/train_config.json``; returns its path."""
        path = Path(folder) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def options(cls) -> list[tuple[str, str, Any, str]]:
        """(dotted name, type, default, help) of every leaf field, for ``--help`` output."""
        return list(leaf_options(cls))


EXTENDS = "extends"  # a config file's key naming the file it starts from (relative to its own folder)


def read_values(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The option tree of a ``.yaml``/``.yml``/``.json`` file; with ``extends: other.yaml``, the other file's tree
    with this one's values laid over it (groups merge key by key; lists and values replace)."""
    if path.resolve() in seen:
        raise ValueError(f"config file {str(path)!r} extends itself (through {', '.join(map(str, seen))})")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        values = json.loads(text)
    else:
        raise ValueError(f"config file {str(path)!r} must end in .yaml, .yml or .json")
    if not isinstance(values, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping, got {type(values).__name__}")
    parent = values.pop(EXTENDS, None)
    if parent is None:
        return values
    if not isinstance(parent, str):
        raise ValueError(f"{path}: {EXTENDS} must name one config file, got {parent!r:.80}")
    return merge(read_values(path.parent / parent, (*seen, path.resolve())), values)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def leaf_options(cls: type, prefix: str = ""):
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from leaf_options(tp, f"{prefix}{f.name}.")
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            yield f"{prefix}{f.name}", type_name(tp), default, f.metadata.get("help", "")


def type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "{" + ",".join(str(a) for a in get_args(tp)) + "}"
    return getattr(tp, "__name__", None) if get_origin(tp) is None else str(tp).replace("typing.", "")


# --- building dataclasses from loose values ----------------------------------------------------------------------


def apply_overrides(values: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``values`` with each ``a.b=text`` set (as text; ``build`` converts it to the field's type)."""
    values = copy.deepcopy(values)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value (nested: lora.r=8)")
        *parents, leaf = key.split(".")
        node = values
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a group of options")
        node[leaf] = text
    return values


def build(cls: type, values: Any, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a dict, converting each value to its field's type; unknown keys raise."""
    if not isinstance(values, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r:.80}")
    hints = get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        known = ", ".join(f"{prefix}{n}" for n in hints)
        raise ValueError(f"unknown option {prefix}{unknown[0]}; expected one of: {known}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = convert(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def convert(value: Any, tp: Any, name: str) -> Any:
    """``value`` as type ``tp``. Strings (command line, YAML's ``1e-4``) are parsed; other mismatches raise."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return convert(value, inner, name)
    if origin is Literal:
        return value  # the dataclass checks the choice and lists them
    if origin is dict:
        if isinstance(value, str):
            value = parse_json(value, name, dict)
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r:.80}")
        return {convert(k, args[0], f"{name} key"): convert(v, args[1], f"{name}[{k!r}]") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = parse_list(value, name)
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, got {value!r:.80}")
        return [convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
    elif tp in (int, float):
        if isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if tp is float or float(value).is_integer():
                return tp(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{name}: no conversion to {tp!r}")  # a field type this module does not handle yet
    raise ValueError(f"{name} must be {type_name(tp)}, got {value!r:.80}")


def parse_json(text: str, name: str, kind: type) -> Any:
    """``text`` (a command-line value) as JSON of type ``kind``; an empty string is an empty one."""
    if not text.strip():
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: cannot parse {text!r} as a JSON {kind.__name__}: {e}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a JSON {kind.__name__}, got {text!r:.80}")
    return value


def parse_list(text: str, name: str) -> list[Any]:
    """``a.jsonl,b.jsonl`` or a JSON list ``["a.jsonl", "b.jsonl"]``; an empty string is an empty list."""
    text = text.strip()
    if text.startswith("["):
        return parse_json(text, name, list)
    return [part.strip() for part in text.split(",") if part.strip()]
