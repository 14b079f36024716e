"""JSON lines, read one way everywhere: training data, evaluation sets, RAG documents, index files, training logs.

``read_jsonl(path)`` yields ``(line number, value)`` for every non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file.
A line that is not UTF-8, not JSON, not an object (unless ``objects=False``), or holds a string that is not valid
Unicode (``grit.text``) is a ``DataFormatError`` whose message starts with ``file:line:``; so is a value that
``parse`` refuses with a ValueError. With ``skip_bad_lines`` such lines are left out instead and collected in
``skipped`` for the caller to count and report.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from grit.text import check_strings

T = TypeVar("T")


class DataFormatError(ValueError):
    """A line of a data file that does not hold what it should; ``str(e)`` starts with ``path:line:``."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path, self.line = Path(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def open_text(path: str | os.PathLike):
    """Open a text file for reading, transparently gunzipping ``*.gz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def parse_line(raw: bytes, objects: bool) -> Any:
    """One line's value; a ValueError says what is wrong with it."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if objects and not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    check_strings(value)
    return value


def read_jsonl(
    path: str | os.PathLike,
    parse: Callable[[Any], T] | None = None,
    *,
    objects: bool = True,
    skip_bad_lines: bool = False,
    skipped: list[DataFormatError] | None = None,
) -> Iterator[tuple[int, T]]:
    """``(line number, parse(value))`` for every non-blank line (see the module docstring)."""
    number = 0
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
        try:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    value = parse_line(raw, objects)
                    yield number, (parse(value) if parse is not None else value)
                except ValueError as e:  # a DataFormatError raised inside parse keeps its own place
                    error = e if isinstance(e, DataFormatError) else DataFormatError(path, number, str(e))
                    if not skip_bad_lines:
                        raise error from None
                    if skipped is not None:
                        skipped.append(error)
        except (gzip.BadGzipFile, EOFError) as e:
            raise DataFormatError(path, number + 1, f"corrupt gzip data: {e}") from None
