"""Text from outside must be valid Unicode: ``check_text`` for one string, ``invalid_string`` for parsed JSON.

Python strings can hold lone UTF-16 surrogates (``"\\ud800"``): ``json.loads`` makes them from a ``\\ud800`` escape
or from the raw bytes ``ed a0 80``, and the tokenizers cannot encode them, failing deep inside transformers with a
``TypeError`` about ``TextEncodeInput``. Every entry point that takes text (encode, generate, RAG, the index, the
training data readers, the server) checks it here first and names the input instead.
"""

from __future__ import annotations

from typing import Any


def surrogate_at(text: str) -> int | None:
    """The index of the first lone surrogate in ``text``, or None when it is valid Unicode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def check_text(text: str, what: str) -> str:
    """``text``, or a ValueError naming ``what`` when it is not valid Unicode."""
    at = surrogate_at(text)
    if at is not None:
        raise ValueError(f"{what}: a lone UTF-16 surrogate (\\u{ord(text[at]):04x}) is not valid Unicode")
    return text


def invalid_string(value: Any, path: str = "", max_depth: int = 32, depth: int = 0) -> tuple[str, str] | None:
    """(path, string) of the first string (key or value) in parsed JSON that is not valid Unicode, or None.
    Nesting deeper than ``max_depth`` is a ValueError (it would only exhaust the recursion of the next reader)."""
    if depth > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels (at {path})")
    if isinstance(value, str):
        return (path or "value", value) if surrogate_at(value) is not None else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = invalid_string(key, path or "value", max_depth, depth + 1)
            if found or (found := invalid_string(item, where, max_depth, depth + 1)):
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := invalid_string(item, f"{path}[{i}]", max_depth, depth + 1):
                return found
    return None


class InvalidText(ValueError):
    """A string in parsed JSON that is not valid Unicode; ``path`` says where (``messages[0].content``)."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


def check_strings(value: Any, max_depth: int = 32) -> None:
    """``InvalidText`` naming the first string of parsed JSON that is not valid Unicode; ValueError for nesting
    deeper than ``max_depth``."""
    if found := invalid_string(value, max_depth=max_depth):
        path, text = found
        try:
            check_text(text, path)
        except ValueError as e:
            raise InvalidText(path, str(e)) from None
