"""Load the documents a RAG index is built from: a folder of .txt/.md files, JSON lines, or a BEIR corpus.

    folder      every *.txt and *.md below it (hidden ones left out); id = path relative to the folder ("notes/a.md"),
                title = first Markdown heading ("# Title"), else the file name without suffix
    .jsonl      one object a line: {"id", "title", "text"}; BEIR's corpus.jsonl spells the id "_id" (both accepted)
    .jsonl.gz   the same, gzipped
    .txt / .md  a single file, loaded like a one-file folder

Bad input is an error that names the file and line. Documents whose text is empty or whitespace are skipped and
counted in one warning (BEIR corpora have a few).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from grit.jsonl import DataFormatError, read_jsonl

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md")


class DocumentError(ValueError):
    """A corpus that cannot be read: malformed line, missing field, duplicate id, unreadable file."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""


def load_documents(path: str | os.PathLike) -> list[Document]:
    """Read a corpus (see the module docstring for the layouts). Order: sorted paths for folders, file order else.

    Raises ``DocumentError`` naming the file (and line) for malformed input or a duplicate id, and
    ``FileNotFoundError`` for a missing path.
    Example:
        >>> docs = load_documents("shared/data/retrieval/cranfield/corpus.jsonl")
        >>> docs[0].id, docs[0].title[:20]
        ('1', 'experimental investi')
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"document path {str(path)!r} does not exist")
    if path.is_dir():
        records = _read_folder(path)
    elif path.name.endswith((".jsonl", ".jsonl.gz")):
        records = _read_json_lines(path)
    elif path.suffix in TEXT_SUFFIXES:
        records = [_read_text_file(path, path.name)]
    else:
        raise DocumentError(f"{path}: expected a folder, a .jsonl / .jsonl.gz file, or a .txt / .md file")
    return check_documents(records, str(path))


def check_documents(records: Iterable[tuple[Document, str]], source: str) -> list[Document]:
    """Refuse duplicate ids and drop empty documents (with one warning). ``records`` pair each document with
    where it came from ("file:line"), so a duplicate names both places."""
    seen: dict[str, str] = {}
    docs, empty = [], 0
    for doc, where in records:
        if doc.id in seen:
            raise DocumentError(f"{where}: duplicate document id {doc.id!r} (first seen at {seen[doc.id]})")
        seen[doc.id] = where
        if not doc.text.strip():
            empty += 1
            continue
        docs.append(doc)
    if empty:
        log.warning("skipped %d of %d documents in %s: their text is empty", empty, len(seen), source)
    return docs


def _read_folder(folder: Path) -> Iterator[tuple[Document, str]]:
    # Hidden folders (.git, .obsidian, ...) hold tool files, not documents.
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in TEXT_SUFFIXES
        and p.is_file()
        and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )
    # A symbolic link that leads out of the folder (to ~/.ssh/notes.md, say) is not the folder's document: indexing
    # it would put a file the user did not choose into a served index.
    root = folder.resolve()
    files = [p for p in found if p.resolve().is_relative_to(root)]
    if len(files) < len(found):
        outside = len(found) - len(files)
        log.warning("left out %d file(s) under %s that are symbolic links to places outside it", outside, folder)
    if not files:
        raise DocumentError(f"{folder}: no .txt or .md files found")
    for file in files:
        yield _read_text_file(file, file.relative_to(folder).as_posix())


def _read_text_file(file: Path, doc_id: str) -> tuple[Document, str]:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DocumentError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return Document(doc_id, text, first_heading(text) or file.stem), str(file)


def first_heading(text: str) -> str:
    """The first Markdown ATX heading ("# Title", any level), or "" when there is none."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            title = stripped.lstrip("#").strip()
            if title:
                return title
    return ""


def _read_json_lines(file: Path) -> Iterator[tuple[Document, str]]:
    try:
        for number, doc in read_jsonl(file, objects=False, parse=lambda row: row):
            where = f"{file}:{number}"
            yield _parse_row(doc, where), where
    except DataFormatError as e:
        raise DocumentError(str(e)) from None


def _parse_row(row: object, where: str) -> Document:
    if not isinstance(row, dict):
        raise DocumentError(f"{where}: expected a JSON object, got {type(row).__name__}")
    key = "_id" if "_id" in row else "id"
    doc_id = row.get(key)
    # BEIR ids are strings, but some converters write numbers; both name the same document.
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id:
        raise DocumentError(f"{where}: needs a non-empty string 'id' (or BEIR '_id'), got {doc_id!r}")
    text, title = row.get("text"), row.get("title") or ""
    if not isinstance(text, str):
        raise DocumentError(f"{where}: document {doc_id!r} needs a string 'text', got {type(text).__name__}")
    if not isinstance(title, str):
        raise DocumentError(f"{where}: document {doc_id!r} has a non-string 'title' ({type(title).__name__})")
    return Document(doc_id, text, title)  # its strings are valid Unicode: grit.jsonl checked them
