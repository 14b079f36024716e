"""Run tasks on a model (and baselines), write ``results.json`` and ``results.md``; the suites ``quick`` and ``full``.

Example:
    >>> from grit import GritModel
    >>> from grit.eval.run import build_suite, default_baselines, run
    >>> results = run(GritModel.load(), build_suite("quick"), "runs/eval/quick", baselines=default_baselines())
    >>> print(open("runs/eval/quick/results.md").read())
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grit
from grit import instructions
from grit.eval.cache import EmbeddingCache
from grit.eval.embedding_tasks import ClassificationTask, RetrievalTask, STSTask
from grit.eval.encoders import BM25Retriever, fingerprint, load_minilm, model_name, placement_record
from grit.eval.generative_tasks import InstructionTask, PerplexityTask, ReadingQATask
from grit.eval.rag_tasks import RagQATask
from grit.eval.tasks import Task, describe

log = logging.getLogger(__name__)


# --- suites -----------------------------------------------------------------------------------------------------

CHECKOUT = Path(grit.__file__).resolve().parents[1]  # the folder that holds grit/, data/ and tests/


def default_data_dir() -> Path:
    """$GRIT_DATA, else ``shared/data`` beside the working directory or beside the grit checkout."""
    if env := os.environ.get("GRIT_DATA"):
        return Path(env).expanduser()
    candidates = [
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / "shared" / "data",
        CHECKOUT.parent / "shared" / "data",
    ]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def project_data_dir() -> Path:
    """``data/`` of the grit checkout: the small sets committed with grit (``data/README.md``), as opposed to the
    shared ones of ``default_data_dir``."""
    return CHECKOUT / "data"


def chat_tasks() -> list[Task]:
    """Human-written instructions with full answers (self-instruct's seed and user-oriented tasks, 89 held out):
    the chat-style check. The P3 answers are mostly labels, so a model that learned to answer in one word scores
    well there and badly here. (Where grit runs without its checkout's ``data/``, ``run`` reports it skipped.)"""
    path = project_data_dir() / "instructions" / "self_instruct_human.jsonl"
    return [InstructionTask("self-instruct", path, heldout_only=True, max_new_tokens=96)]


def all_tasks(data: Path) -> list[Task]:
    """The ``full`` suite: every task on the shared data sets at full size (hours for a 135M model on 2 CPU cores,
    minutes on a GPU). Sizes follow MTEB where the task is an MTEB one."""
    retrieval, classification = data / "retrieval", data / "classification"
    return [
        STSTask("stsb", data / "sts" / "stsb-test.jsonl", instructions.GRITLM_E5["STSBenchmark"]),
        RetrievalTask("cranfield", retrieval / "cranfield", instructions.CRANFIELD),
        RetrievalTask("msmarco-dl19-5k", retrieval / "msmarco-dl19-5k", instructions.GRITLM_E5["MSMARCO"]),
        ClassificationTask(
            "banking77",
            classification / "banking77" / "train.jsonl",
            classification / "banking77" / "test.jsonl",
            instructions.GRITLM_E5["Banking77Classification"],
        ),
        ClassificationTask(  # 8 rows per label is too few for a 2-label task; MTEB's sentiment tasks use 32
            "sst2",
            classification / "sst2" / "train.jsonl",
            classification / "sst2" / "test.jsonl",
            instructions.SST2,
            samples_per_label=32,
        ),
        # GSM8K and the P3 mix are training sets (AdversarialQA may be one): these tasks score only the rows that
        # grit.splits holds out, which training with data.exclude_heldout never sees.
        PerplexityTask("gsm8k-ppl", data / "generative" / "gsm8k_train.jsonl", limit=500, heldout_only=True),
        ReadingQATask("adversarialqa", data / "rag" / "adversarialqa.jsonl", heldout_only=True),
        InstructionTask("p3-instructions", data / "generative" / "p3_t0_mix.jsonl.gz", limit=500, heldout_only=True),
        *chat_tasks(),
        *rag_tasks(data),
    ]


# Sized for ~5 minutes for SmolLM2-135M on 2 idle CPU cores (about 150 tokens/s embedded, 10 tokens/s generated).
QUICK: dict[str, dict[str, int]] = {
    "stsb": {"limit": 100},
    "cranfield": {"limit": 10, "corpus_limit": 150},  # ~80 judged abstracts + unjudged ones, ~200 tokens each
    "msmarco-dl19-5k": {"limit": 3, "corpus_limit": 300},  # ~80 judged passages per query
    "banking77": {"limit": 100, "samples_per_label": 2, "n_experiments": 1},
    "sst2": {"limit": 100, "samples_per_label": 32, "n_experiments": 1},
    "gsm8k-ppl": {"limit": 20},
    "adversarialqa": {"limit": 10},
    "p3-instructions": {"limit": 10},
    "self-instruct": {"limit": 10},
    "adversarialqa-rag": {"limit": 5, "corpus_size": 50},
    "hotpotqa-rag": {"limit": 3, "corpus_size": 50, "modes": ("none", "doc")},
}


def rag_tasks(data: Path) -> list[Task]:
    """Retrieve-then-answer with every cache mode (``grit.eval.rag_tasks``). Nine greedy answers per question (none,
    and four cached modes from each of two cache sources), so the full suite asks 100 of the 138 held-out questions.
    """
    return [
        RagQATask("adversarialqa-rag", data / "rag" / "adversarialqa.jsonl", limit=100, heldout_only=True),
        # Multi-hop: two supporting paragraphs among each question's ten, answered from the top 2 (issue 22).
        RagQATask(
            "hotpotqa-rag",
            data / "rag" / "hotpotqa_multidoc.jsonl",
            limit=70,
            heldout_only=True,
            k=2,
            recall_at=(2, 5, 10),
        ),  # fmt: skip
    ]


# The suite results/baseline.md is made with: every embedding task at full size except the MS MARCO corpus (the
# judged passages, which are always kept, ~4,100 of 5,000, plus unjudged ones up to 2,000 drawn with a fixed seed:
# in practice only the judged ones), generative tasks on seeded samples. About 1.5-2 hours for SmolLM2-135M on 2
# quiet CPU cores (Cranfield alone: 15 minutes).
STANDARD: dict[str, dict[str, int]] = {
    "msmarco-dl19-5k": {"corpus_limit": 2000},
    "gsm8k-ppl": {"limit": 200},
    "adversarialqa": {"limit": 100},
    "p3-instructions": {"limit": 100},
    "adversarialqa-rag": {"limit": 30, "corpus_size": 200},
    "hotpotqa-rag": {"limit": 30, "corpus_size": 300},
}


# The suite trained models are compared with (results/grit-claims.md): the standard suite's STS-B (all pairs) and
# generative samples, smaller retrieval and classification samples, and RAG answers with and without the document
# cache (both cache sources). About 30 minutes for SmolLM2-135M on 2 quiet CPU cores.
COMPARE: dict[str, dict[str, Any]] = {
    "cranfield": {"limit": 100, "corpus_limit": 700},
    "msmarco-dl19-5k": {"limit": 10, "corpus_limit": 1000},  # the judged passages of 10 queries: ~950
    "banking77": {"limit": 1000},
    "sst2": {"limit": 1000},
    **{name: STANDARD[name] for name in ("gsm8k-ppl", "adversarialqa", "p3-instructions")},
    "adversarialqa-rag": {"limit": 50, "corpus_size": 200, "modes": ("none", "doc")},
    "hotpotqa-rag": {"limit": 30, "corpus_size": 300, "modes": ("none", "doc")},
}


def sized(tasks: list[Task], sizes: dict[str, dict[str, Any]], default: int | None) -> list[Task]:
    """Tasks with the settings ``sizes`` names for them; the others cut to ``default`` examples (None: as they are)."""
    return [dataclasses.replace(t, **sizes[t.name]) if t.name in sizes else t.limited(default) for t in tasks]


def quick_tasks(data: Path) -> list[Task]:
    """The ``quick`` suite: every task on small seeded samples (``QUICK``); a task not listed there gets 20."""
    return sized(all_tasks(data), QUICK, 20)


def standard_tasks(data: Path) -> list[Task]:
    """The ``standard`` suite (``STANDARD``): the one the committed baseline numbers come from."""
    return sized(all_tasks(data), STANDARD, None)


def compare_tasks(data: Path) -> list[Task]:
    """The ``compare`` suite (``COMPARE``): trained models side by side, in half an hour each."""
    return sized(all_tasks(data), COMPARE, None)


SUITES: dict[str, Callable[[Path], list[Task]]] = {
    "quick": quick_tasks,
    "compare": compare_tasks,
    "standard": standard_tasks,
    "full": all_tasks,
}


def build_suite(name: str, data: Path | None = None, limit: int | None = None) -> list[Task]:
    """The tasks of suite ``name`` on ``data`` (default: ``default_data_dir()``), each cut to ``limit`` examples."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    data = Path(data) if data is not None else default_data_dir()
    if not data.is_dir():
        raise FileNotFoundError(f"data folder {data} does not exist; pass --data or set $GRIT_DATA")
    return [task.limited(limit) for task in SUITES[name](data)]


def default_baselines() -> list[Any]:
    """all-MiniLM-L6-v2 (embedding tasks) and BM25 (retrieval): the peers every table is read against."""
    return [load_minilm(), BM25Retriever()]


# --- running ----------------------------------------------------------------------------------------------------


def run(
    model: Any,
    tasks: Sequence[Task],
    out_dir: str | os.PathLike,
    *,
    baselines: Sequence[Any] = (),
    use_cache: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` and each baseline on every task it supports; write and return the results.

    The result files are rewritten after every task, so a run that stops keeps what it finished. With ``resume``,
    the results already in ``out_dir`` are kept and a (model, task) pair is skipped when the stored one has the same
    model fingerprint and the same task settings: a stopped run continues, and runs of different tasks into one
    folder add up to one table.

    Args:
        model: A GritModel, or anything meeting a protocol of ``grit.eval.encoders``.
        tasks: Tasks from ``build_suite`` or built by hand.
        out_dir: Gets ``results.json`` (everything, with task settings) and ``results.md`` (the table).
        baselines: More models run on the same tasks in the same run, e.g. ``default_baselines()``.
        use_cache: Read and write corpus embeddings under ``$GRIT_CACHE/embeddings``.
        resume: Keep and reuse the results already in ``out_dir`` (see above).
    Returns:
        ``{"created", "grit_version", "host", "models", "fingerprints", "placements", "tasks", "task_settings",
        "rows", "details", "skipped"}`` (``placements``: each model's resolved device, dtype and threads;
        ``task_settings``: the settings of each ``model/task`` pair); each row has model, task, metric, value (None
        for NaN), n (examples scored) and seconds (the whole task, this model).
    """
    out = Path(out_dir)
    results = read_results(out) if resume else None
    results = results or {"models": [], "fingerprints": {}, "tasks": [], "rows": [], "details": {}, "skipped": []}
    settings = {t["name"]: t for t in results["tasks"]}  # each task's latest settings, for the table's readers
    # What each (model, task) pair was scored with: a task rerun with new settings for one model leaves the other
    # models' rows with the old ones. Files from before this record: the one setting per task they then had.
    scored_with = results.setdefault(
        "task_settings", {f"{r['model']}/{r['task']}": settings.get(r["task"]) for r in results["rows"]}
    )
    for m in [model, *baselines]:
        name = model_name(m)
        identity = fingerprint(m) if use_cache or resume else None
        cache = EmbeddingCache(identity) if identity and use_cache else None
        same_model = identity is not None and results["fingerprints"].get(name) == identity
        results["models"] = list(dict.fromkeys([*results["models"], name]))
        results["fingerprints"][name] = identity
        if (where := placement_record(m)) is not None:
            results.setdefault("placements", {})[name] = where
        for task in tasks:
            if not task.supports(m):
                continue
            done = any(r["model"] == name and r["task"] == task.name for r in results["rows"])
            if same_model and done and scored_with.get(f"{name}/{task.name}") == task_settings(task):
                log.info("%s on %s: kept from %s", name, task.name, out / "results.json")
                continue
            log.info("%s on %s", name, task.name)
            start = time.perf_counter()
            results["rows"] = [r for r in results["rows"] if (r["model"], r["task"]) != (name, task.name)]
            results["skipped"] = [r for r in results["skipped"] if (r["model"], r["task"]) != (name, task.name)]
            try:
                scores = task.evaluate(m, cache)
            except FileNotFoundError as e:  # a data set that is not on this machine: say so, run the rest
                log.warning("skipping %s: %s", task.name, e)
                results["skipped"].append({"model": name, "task": task.name, "reason": str(e)})
                continue
            seconds = time.perf_counter() - start
            for metric, value in scores.metrics.items():
                results["rows"].append(
                    {
                        "model": name,
                        "task": task.name,
                        "metric": metric,
                        "value": finite(value),
                        "n": scores.n,
                        "seconds": round(seconds, 2),
                    }
                )
            results["details"][f"{name}/{task.name}"] = {"skipped_examples": scores.skipped, **scores.details}
            settings[task.name] = scored_with[f"{name}/{task.name}"] = task_settings(task)
            log.info("%s %s: %s (%.1f s)", name, task.name, scores.metrics, seconds)
            write_results(stamped(results, settings), out)
    results = stamped(results, settings)
    write_results(results, out)
    return results


def task_settings(task: Task) -> dict[str, Any]:
    """``describe(task)`` as it reads back from JSON (tuples become lists), so stored and new settings compare."""
    return json.loads(json.dumps(describe(task)))


def stamped(results: dict[str, Any], settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``results`` with this run's time, version and host, and the settings of every task it has rows for."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "grit_version": grit.__version__,
        "host": platform.node(),
        **{k: v for k, v in results.items() if k not in ("created", "grit_version", "host", "tasks")},
        "tasks": list(settings.values()),
    }


def read_results(out: Path) -> dict[str, Any] | None:
    """The ``results.json`` in ``out``, or None when there is none. An unreadable one raises: resuming must not
    silently start over and overwrite hours of results."""
    path = out / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: cannot resume from it, not valid JSON ({e})") from None
    results.setdefault("fingerprints", {})  # written by grit before resuming existed: nothing is reused
    return results


def finite(value: float) -> float | None:
    """NaN and infinities become None (JSON null): strict JSON has no NaN."""
    value = float(value)
    return value if math.isfinite(value) else None


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One row per (model, task, metric), grouped by task so a model reads next to its baselines."""
    lines = ["| model | task | metric | value | n | seconds |", "|---|---|---|---:|---:|---:|"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for r in sorted(rows, key=lambda r: tasks.index(r["task"])):
        value = "n/a" if r["value"] is None else f"{r['value']:.4f}"
        lines.append(f"| {r['model']} | {r['task']} | {r['metric']} | {value} | {r['n']} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    skipped = "".join(f"- {s['model']} / {s['task']} skipped: {s['reason']}\n" for s in results["skipped"])
    title = f"# grit eval: {', '.join(results['models'])}\n\n{results['created']}, grit {results['grit_version']}\n\n"
    (out / "results.md").write_text(title + markdown_table(results["rows"]) + (f"\n{skipped}" if skipped else ""))
    log.info("wrote %s and %s", out / "results.json", out / "results.md")
