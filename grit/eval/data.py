"""Readers for the evaluation data formats in ``shared/data`` (JSON lines, optionally gzipped, and BEIR folders).

Every reader checks each row and raises ``DataFormatError`` naming the file and line of the first bad one, so a
broken file never turns into a silently smaller evaluation.

    sts             {"sentence1": str, "sentence2": str, "score": number}            sts/stsb-test.jsonl
    retrieval       corpus.jsonl {_id, title, text}, queries.jsonl {_id, text},
                    qrels/test.tsv "query-id<TAB>corpus-id<TAB>score" (BEIR)         retrieval/cranfield/
    classification  {"text": str, "label": str | int}                               classification/sst2/test.jsonl
    rag             {"id", "question", "answers": [str, ...], "passage", "title"}    rag/adversarialqa.jsonl
    generative      {"text": [user, assistant, user, assistant, ...]}                generative/gsm8k_train.jsonl
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from grit.jsonl import DataFormatError, open_text, read_jsonl
from grit.splits import is_held_out

T = TypeVar("T")


# --- rows -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StsPair:
    sentence1: str
    sentence2: str
    score: float


@dataclass(frozen=True)
class LabeledText:
    text: str
    label: str


@dataclass(frozen=True)
class QaExample:
    id: str
    question: str
    answers: tuple[str, ...]
    passage: str
    title: str = ""
    paragraphs: tuple[str, ...] = ()  # multi-document rows: the paragraphs to index (distractors included)
    supporting: tuple[str, ...] = ()  # multi-document rows: the paragraphs the answer needs

    @property
    def documents(self) -> tuple[str, ...]:
        """What this row puts in a corpus: its paragraphs, or its one passage."""
        return self.paragraphs or (self.passage,)

    @property
    def gold(self) -> tuple[str, ...]:
        """The documents retrieval should find: the supporting paragraphs, or the passage."""
        return self.supporting or (self.passage,)


@dataclass(frozen=True)
class Conversation:
    """Alternating user / assistant turns, user first."""

    turns: tuple[str, ...]

    def messages(self, upto: int | None = None) -> list[dict[str, str]]:
        """The first ``upto`` turns as chat messages (all of them for ``None``)."""
        roles = ("user", "assistant")
        return [{"role": roles[i % 2], "content": t} for i, t in enumerate(self.turns[:upto])]


@dataclass
class BeirDataset:
    """A BEIR retrieval folder: documents, queries and graded relevance judgments (qrels)."""

    corpus: dict[str, tuple[str, str]]  # doc id -> (title, text)
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}

    def doc_text(self, doc_id: str) -> str:
        """Title and text joined as BEIR and GritLM do: ``(title + " " + text).strip()``."""
        title, text = self.corpus[doc_id]
        return f"{title} {text}".strip()


# --- JSON lines -------------------------------------------------------------------------------------------------


def field(row: dict[str, Any], name: str, kind: type | tuple[type, ...], path, line: int, nonempty: bool = True):
    """``row[name]`` checked against ``kind`` (and non-empty for strings), else ``DataFormatError``."""
    if name not in row:
        raise DataFormatError(path, line, f"missing field {name!r} (has {', '.join(map(repr, row)) or 'none'})")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        wanted = " or ".join(k.__name__ for k in kinds)
        raise DataFormatError(path, line, f"field {name!r} must be {wanted}, got {type(value).__name__}")
    if nonempty and isinstance(value, str) and not value.strip():
        raise DataFormatError(path, line, f"field {name!r} is empty")
    return value


def string_list(
    row: dict[str, Any], name: str, path, line: int, min_len: int = 1, allow_empty: bool = False
) -> tuple[str, ...]:
    items = field(row, name, list, path, line)
    if len(items) < min_len or not all(isinstance(x, str) and (allow_empty or x.strip()) for x in items):
        what = "strings" if allow_empty else "non-empty strings"
        raise DataFormatError(path, line, f"field {name!r} must be a list of >= {min_len} {what}")
    return tuple(items)


def read_sts(path: str | os.PathLike) -> list[StsPair]:
    """STS pairs with a gold similarity score."""
    return [
        StsPair(
            field(r, "sentence1", str, path, n),
            field(r, "sentence2", str, path, n),
            float(field(r, "score", (int, float), path, n)),
        )
        for n, r in read_jsonl(path)
    ]


def read_classification(path: str | os.PathLike) -> list[LabeledText]:
    """Texts with a label (a string, or an integer kept as its string)."""
    return [
        LabeledText(field(r, "text", str, path, n), str(field(r, "label", (str, int), path, n)))
        for n, r in read_jsonl(path)
    ]


def read_rag(path: str | os.PathLike, heldout_only: bool = False) -> list[QaExample]:
    """Questions with the passage that answers them and one or more gold answers (``heldout_only``: only the rows
    ``grit.splits`` keeps out of training). Multi-document rows (HotpotQA) also have ``passages`` (paragraphs,
    distractors among them) and ``supporting`` (the indices of those the answer needs)."""
    rows = []
    for n, r in read_jsonl(path):
        paragraphs = paragraph_texts(r, path, n) if "passages" in r else ()
        supporting = ()
        if paragraphs:
            picks = field(r, "supporting", list, path, n)
            if not picks or not all(type(i) is int and 0 <= i < len(paragraphs) for i in picks):
                raise DataFormatError(path, n, f"field 'supporting' must list indices of its {len(paragraphs)} "
                                               f"passages, got {picks!r:.80}")  # fmt: skip
            supporting = tuple(paragraphs[i] for i in picks)
        rows.append(QaExample(
            str(field(r, "id", (str, int), path, n)),
            field(r, "question", str, path, n),
            string_list(r, "answers", path, n),
            field(r, "passage", str, path, n),
            field(r, "title", str, path, n, nonempty=False) if "title" in r else "",
            paragraphs,
            supporting,
        ))  # fmt: skip
    return held_out_examples(rows) if heldout_only else rows


def paragraph_texts(row: dict[str, Any], path, line: int) -> tuple[str, ...]:
    """A multi-document row's ``passages``: strings, or ``{"title", "text"}`` objects (HotpotQA), as their texts."""
    items = field(row, "passages", list, path, line)
    texts = [p.get("text") if isinstance(p, dict) else p for p in items]
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DataFormatError(path, line, "field 'passages' must list non-empty strings or {title, text} objects")
    return tuple(texts)


def held_out_examples(rows: list[QaExample]) -> list[QaExample]:
    """The rows ``grit.splits`` keeps out of training, so that a caller holding all of a file's rows need not read
    it again. Every RAG row has an ``id`` and the split hashes only that; ``str`` keeps it (``5`` and ``"5"`` hash
    alike)."""
    return [r for r in rows if is_held_out({"id": r.id})]


def read_generative(path: str | os.PathLike, heldout_only: bool = False) -> list[Conversation]:
    """Conversations: ``text`` holds user and assistant turns in turn, user first, ending with an assistant turn.

    Empty turns are accepted here (the P3 mix has 280 empty targets, all from trec_* templates); the tasks count
    and leave out what they cannot score. ``heldout_only``: only the rows ``grit.splits`` keeps out of training.
    """
    rows = []
    for n, r in read_jsonl(path):
        if heldout_only and not is_held_out(r):
            continue
        turns = string_list(r, "text", path, n, min_len=2, allow_empty=True)
        if len(turns) % 2:
            raise DataFormatError(path, n, f"field 'text' has {len(turns)} turns; expected user/assistant pairs")
        rows.append(Conversation(turns))
    return rows


# --- BEIR -------------------------------------------------------------------------------------------------------


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV with the header ``query-id corpus-id score``."""
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if number == 1 and parts[:2] == ["query-id", "corpus-id"]:
                continue
            if not line.strip():
                continue
            if len(parts) != 3:
                raise DataFormatError(path, number, f"expected 3 tab-separated columns, got {len(parts)}")
            try:
                score = int(parts[2])
            except ValueError:
                raise DataFormatError(path, number, f"score must be an integer, got {parts[2]!r}") from None
            qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def read_beir(folder: str | os.PathLike, split: str = "test") -> BeirDataset:
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv`` (``.gz`` variants accepted)."""
    folder = Path(folder)

    def find(name: str) -> Path:
        plain = folder / name
        return plain if plain.exists() or not plain.with_name(plain.name + ".gz").exists() else Path(f"{plain}.gz")

    corpus_path, queries_path = find("corpus.jsonl"), find("queries.jsonl")
    corpus = {}
    for n, r in read_jsonl(corpus_path):
        title = field(r, "title", str, corpus_path, n, nonempty=False) if "title" in r else ""
        corpus[str(field(r, "_id", (str, int), corpus_path, n))] = (
            title,
            field(r, "text", str, corpus_path, n, False),
        )
    queries = {
        str(field(r, "_id", (str, int), queries_path, n)): field(r, "text", str, queries_path, n)
        for n, r in read_jsonl(queries_path)
    }
    return BeirDataset(corpus, queries, read_qrels(find(f"qrels/{split}.tsv")))


# --- subsets ----------------------------------------------------------------------------------------------------


def sample(rows: Sequence[T], limit: int | None, seed: int = 0) -> list[T]:
    """A deterministic random subset of ``limit`` rows, in file order (all rows for ``None``).

    Random rather than the first rows because several files are sorted (Banking77 by label, STS-B by genre).
    """
    if limit is None or limit >= len(rows):
        return list(rows)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]
