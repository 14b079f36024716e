"""Side-by-side tables of several ``grit eval`` runs: one column per model, one row per task's headline metric, and
the embedding and generative averages that GRIT's claims are stated in.

    grit report base=runs/eval/base unified=runs/eval/unified --train unified=runs/grit-smollm2-unified \\
        --out results/grit-claims.md

Each run folder holds a ``results.json`` (``grit eval --out``); ``LABEL=A+B`` joins two runs of one model (tasks
evaluated in separate folders). Its first model is named by the label; baselines in it (all-MiniLM-L6-v2, BM25)
get a column of their own, once, from the first run that has them.
``--mean LABEL=A,B`` adds a column that averages columns A and B (runs of one setting with other seeds): each cell
is the mean of theirs, and its average rows also show the lowest and highest of the members' averages, so a gap
between settings can be read against the spread from seed to seed.
``--train LABEL=LOG`` adds each training run's steps, tokens and seconds; ``--loss-windows 1-25,26-50`` adds the
mean of its contrastive and next-token losses over those step ranges (how fast each loss fell).

Averages (higher is better in every term, so one number can rank models):
    embedding   mean of STS-B Spearman, Cranfield and MS MARCO nDCG@10, Banking77 and SST-2 accuracy
    generative  mean of AdversarialQA F1, P3 ROUGE-L, self-instruct ROUGE-L (full-sentence answers: the chat check)
                and the GSM8K per-token likelihood exp(-NLL) = 1 / perplexity
An average is shown only for a model that has every one of its terms.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grit.jsonl import read_jsonl

# task -> (metric, how it is shown). Perplexity is shown as is; its average term is exp(-nll_per_token).
HEADLINE: dict[str, str] = {
    "stsb": "spearman",
    "cranfield": "ndcg@10",
    "msmarco-dl19-5k": "ndcg@10",
    "banking77": "accuracy",
    "sst2": "accuracy",
    "gsm8k-ppl": "perplexity",
    "adversarialqa": "f1",
    "p3-instructions": "rouge_l",
    "self-instruct": "rouge_l",
    "adversarialqa-rag": "recall@1",
}
RAG_METRICS = tuple(  # answers with and without the document cache
    f"{mode}/{metric}" for metric in ("exact_match", "f1") for mode in ("none", "doc/bidirectional", "doc/causal")
)
EMBEDDING_AVERAGE = ("stsb", "cranfield", "msmarco-dl19-5k", "banking77", "sst2")
GENERATIVE_AVERAGE = ("adversarialqa", "p3-instructions", "self-instruct", "gsm8k-ppl")


@dataclass
class Column:
    """One model's numbers: ``values[(task, metric)]``."""

    label: str
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    seconds: float = 0.0  # evaluation time, all tasks
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> its settings in that run
    members: list[Column] = field(default_factory=list)  # a --mean column: the columns it averages

    def get(self, task: str, metric: str) -> float | None:
        return self.values.get((task, metric))

    def term(self, task: str) -> float | None:
        """The task's contribution to an average (higher is better)."""
        if self.members:  # the mean of the members' terms: exp(-nll) of a mean nll would be another number
            return mean_or_none([m.term(task) for m in self.members])
        if task == "gsm8k-ppl":
            nll = self.get(task, "nll_per_token")
            return None if nll is None else math.exp(-nll)
        return self.get(task, HEADLINE[task])

    def average(self, tasks: Sequence[str]) -> float | None:
        return mean_or_none([self.term(t) for t in tasks])

    def spread(self, tasks: Sequence[str]) -> tuple[float, float] | None:
        """Lowest and highest of the members' averages (a --mean column), or None."""
        averages = [m.average(tasks) for m in self.members]
        return None if not averages or None in averages else (min(averages), max(averages))


def mean_or_none(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def mean_column(label: str, members: Sequence[Column]) -> Column:
    """A column whose cells are the means of ``members``' (only where every member has the cell)."""
    keys = set.intersection(*(set(m.values) for m in members))
    values = {k: sum(m.values[k] for m in members) / len(members) for k in sorted(keys)}
    seconds = sum(m.seconds for m in members) / len(members)
    return Column(label, values, seconds, dict(members[0].settings), list(members))


def add_means(cols: Sequence[Column], means: Sequence[tuple[str, str]]) -> list[Column]:
    """``cols`` plus one mean column per (label, "A,B,...") in ``means``, each naming two or more columns."""
    by_label = {c.label: c for c in cols}
    out = list(cols)
    for label, names in means:
        wanted = [n for n in names.split(",") if n]
        unknown = [n for n in wanted if n not in by_label]
        problem = (
            f"{label} is a column already" if label in by_label
            else f"no column {unknown}" if unknown
            else "name two or more columns" if len(wanted) < 2
            else None
        )  # fmt: skip
        if problem:
            raise ValueError(f"--mean {label}={names}: {problem}; the columns are {', '.join(by_label)}")
        out.append(mean_column(label, [by_label[n] for n in wanted]))
        by_label[label] = out[-1]
    return out


def read_run(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "results.json" if Path(folder).is_dir() else Path(folder)
    if not path.is_file():
        raise FileNotFoundError(f"no results.json at {path}; run `grit eval MODEL --out {folder}` first")
    return json.loads(path.read_text())


def read_runs(spec: str | Path) -> dict[str, Any]:
    """One run, or several of the same model joined by ``+`` (tasks spread over folders; a later run's task wins)."""
    merged: dict[str, Any] = {"models": [], "rows": [], "tasks": []}
    for part in str(spec).split("+"):
        results = read_run(part)
        if merged["models"] and results["models"][:1] != merged["models"][:1]:
            raise ValueError(f"{spec}: {part} is a run of {results['models'][0]}, not {merged['models'][0]}")
        pairs = {(r["model"], r["task"]) for r in results["rows"]}
        merged["rows"] = [r for r in merged["rows"] if (r["model"], r["task"]) not in pairs] + results["rows"]
        names = {t["name"] for t in results.get("tasks", [])}
        merged["tasks"] = [t for t in merged["tasks"] if t["name"] not in names] + results.get("tasks", [])
        merged["models"] = list(dict.fromkeys(merged["models"] + results["models"]))
        # A later run's task replaces the earlier one's settings too, also where the later file predates per-model
        # settings (it has "tasks" only): a stale per-model record would flag the task as scored differently.
        kept = {k: v for k, v in merged.get("task_settings", {}).items() if k.rpartition("/")[2] not in names}
        merged["task_settings"] = {**kept, **results.get("task_settings", {})}
    return merged


def columns(runs: Sequence[tuple[str, str | Path]]) -> list[Column]:
    """The label's model of each run, then each baseline model the runs hold (first occurrence)."""
    out: list[Column] = []
    seen_baselines: set[str] = set()
    for label, folder in runs:
        results = read_runs(folder)
        models = results["models"]
        settings = {t["name"]: t for t in results.get("tasks", [])}
        for i, model in enumerate(models):
            if i > 0 and model in seen_baselines:
                continue
            scored_with = results.get("task_settings", {})  # per model and task, when the file records it
            col = Column(label if i == 0 else model)
            col.settings = {t: scored_with.get(f"{model}/{t}", settings.get(t)) for t in settings}
            tasks_seen: dict[str, float] = {}
            for row in results["rows"]:
                if row["model"] == model and row["value"] is not None:
                    col.values[(row["task"], row["metric"])] = row["value"]
                    tasks_seen[row["task"]] = row["seconds"]
            col.seconds = sum(tasks_seen.values())
            if i > 0:
                seen_baselines.add(model)
            out.append(col)
    return out


def read_train_log(folder: str | Path) -> list[dict[str, Any]]:
    """The records of a ``grit train`` run's ``log.jsonl`` (the run folder, or the log file itself, e.g. a copy
    committed beside the results)."""
    path = Path(folder) / "log.jsonl" if Path(folder).is_dir() else Path(folder)
    if not path.is_file():
        raise FileNotFoundError(f"no log.jsonl in {folder}; is it a grit train output_dir?")
    return [record for _, record in read_jsonl(path)]


def training_summary(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Steps, trained tokens and wall-clock seconds of a run, from its log records."""
    return {
        "steps": max((r["step"] for r in records), default=0),
        "tokens": sum(r.get("tokens", 0) for r in records),
        "seconds": sum(r.get("seconds", 0.0) for r in records),
    }


LOSSES = {"loss_emb": "contrastive", "loss_gen": "next-token"}  # log.jsonl key -> how the windows table names it


def parse_windows(spec: str) -> list[tuple[int, int]]:
    """``"1-25,26-50,51-100"`` → ``[(1, 25), (26, 50), (51, 100)]``: inclusive step ranges."""
    windows = []
    for part in spec.split(","):
        first, sep, last = part.strip().partition("-")
        if not (sep and first.isdigit() and last.isdigit()) or not 1 <= int(first) <= int(last):
            raise ValueError(f"--loss-windows: {part!r} is not a step range FIRST-LAST (1 <= FIRST <= LAST)")
        windows.append((int(first), int(last)))
    return windows


def window_mean(records: Sequence[dict[str, Any]], key: str, window: tuple[int, int]) -> float | None:
    """Mean of ``key`` over the logged steps inside ``window`` (None where none logged it)."""
    values = [r[key] for r in records if window[0] <= r["step"] <= window[1] and r.get(key) is not None]
    return mean_or_none(values)


def loss_windows_table(logs: dict[str, Sequence[dict[str, Any]]], windows: Sequence[tuple[int, int]]) -> str:
    """Mean training losses of each run over step windows: how fast each loss fell, beside the final scores."""
    keys = [k for k in LOSSES if any(r.get(k) is not None for records in logs.values() for r in records)]
    heads = [f"{LOSSES[k]} {lo}–{hi}" for k in keys for lo, hi in windows]
    lines = ["| model | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for label, records in logs.items():
        cells = [fmt(window_mean(records, k, w), 3) for k in keys for w in windows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def differing_settings(cols: Sequence[Column]) -> list[str]:
    """Tasks that columns scored with different settings (sizes, samples): their numbers do not compare."""
    out = []
    for task in dict.fromkeys(t for c in cols for t, _ in c.values):
        seen = [c.settings.get(task) for c in cols if any(t == task for t, _ in c.values)]
        if any(s != seen[0] for s in seen[1:]):
            out.append(task)
    return out


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(
    cols: Sequence[Column],
    training: dict[str, dict[str, float]] | None = None,
    averages: Sequence[Sequence[str]] = (),
) -> str:
    """The comparison table (tasks × models) and, when given, a training table. ``averages``: more task lists to
    average, each its own row (e.g. the tasks that every column has, when some runs scored a part of a suite)."""
    header = "| task | metric | " + " | ".join(c.label for c in cols) + " |"
    lines = [header, "|---|---|" + "---:|" * len(cols)]
    rows = [("embedding average", EMBEDDING_AVERAGE), ("generative average", GENERATIVE_AVERAGE)]
    rows += [("average of " + ", ".join(tasks), tasks) for tasks in averages]
    for name, tasks in rows:
        lines.append(f"| **{name}** | | " + " | ".join(average_cell(c, tasks) for c in cols) + " |")
    metrics = [(t, m) for t, m in HEADLINE.items()] + [("adversarialqa-rag", m) for m in RAG_METRICS]
    for task, metric in metrics:
        if all(c.get(task, metric) is None for c in cols):
            continue
        lines.append(f"| {task} | {metric} | " + " | ".join(fmt(c.get(task, metric)) for c in cols) + " |")
    lines.append("| eval time (s) | | " + " | ".join(f"{c.seconds:.0f}" for c in cols) + " |")
    text = "\n".join(lines) + "\n"
    if differ := differing_settings(cols):
        text += "\nNot comparable across columns (the runs used different settings): " + ", ".join(differ) + "\n"
    if training:
        rows = ["| model | steps | trained tokens | seconds |", "|---|---:|---:|---:|"]
        rows += [f"| {k} | {v['steps']} | {v['tokens']:,} | {v['seconds']:.0f} |" for k, v in training.items()]
        text += "\n" + "\n".join(rows) + "\n"
    return text


def average_cell(col: Column, tasks: Sequence[str]) -> str:
    cell = f"**{fmt(col.average(tasks))}**"
    if spread := col.spread(tasks):
        cell += f" ({fmt(spread[0])}–{fmt(spread[1])})"
    return cell


def parse_pairs(items: Sequence[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"{what} {item!r} must look like LABEL=PATH")
        pairs.append((label, path))
    return pairs


def check_tasks(tasks: Sequence[str]) -> list[str]:
    unknown = [t for t in tasks if t not in HEADLINE]
    if unknown or not tasks:
        raise ValueError(f"--average: unknown task(s) {unknown or tasks}; known: {', '.join(HEADLINE)}")
    return list(tasks)
