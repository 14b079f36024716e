import gzip
import json
import logging

import pytest
from conftest import SHARED_DATA

from grit.rag.documents import Document, DocumentError, first_heading, load_documents


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_folder_ids_are_relative_paths_and_titles_headings_or_names(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keys.md").write_text("Intro line\n\n## Rotating keys\n\nRotate them monthly.\n")
    (tmp_path / "plain.txt").write_text("No heading here.")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # not a text suffix: ignored
    (tmp_path / ".obsidian").mkdir()
    (tmp_path / ".obsidian" / "workspace.md").write_text("# tool state")  # hidden folder: ignored
    docs = load_documents(tmp_path)
    assert [(d.id, d.title) for d in docs] == [("notes/keys.md", "Rotating keys"), ("plain.txt", "plain")]
    assert docs[1].text == "No heading here."


def test_symbolic_links_out_of_the_folder_are_not_followed(tmp_path, caplog):
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nnot for the index")
    docs = tmp_path / "docs"
    (docs / "inner").mkdir(parents=True)
    (docs / "a.md").write_text("# A\n\nkept")
    (docs / "inner" / "b.md").write_text("kept too")
    (docs / "leak.md").symlink_to(outside / "secret.md")  # a linked file
    (docs / "linked").symlink_to(outside, target_is_directory=True)  # a linked folder
    (docs / "alias.md").symlink_to(docs / "a.md")  # a link inside the folder stays
    with caplog.at_level(logging.WARNING):
        ids = [d.id for d in load_documents(docs)]
    assert "leak.md" not in ids and not any(i.startswith("linked/") for i in ids)
    assert {"a.md", "inner/b.md", "alias.md"} <= set(ids)
    assert "symbolic links to places outside it" in caplog.text


def test_single_text_file(tmp_path):
    path = tmp_path / "a.md"
    path.write_text("# Title\nbody")
    assert load_documents(path) == [Document("a.md", "# Title\nbody", "Title")]


def test_first_heading_skips_empty_hashes():
    assert first_heading("#\n#   \n### Real one ###") == "Real one ###"
    assert first_heading("no heading") == ""


def test_json_lines_beir_and_gzip(tmp_path):
    rows = [{"id": "a", "title": "A", "text": "alpha"}, "", {"id": 7, "text": "x"}]
    plain = write_lines(tmp_path / "docs.jsonl", rows)
    assert load_documents(plain) == [Document("a", "alpha", "A"), Document("7", "x", "")]
    beir = tmp_path / "corpus.jsonl.gz"
    with gzip.open(beir, "wt") as f:
        f.write(json.dumps({"_id": "d1", "title": "T", "text": "beir text", "metadata": {}}) + "\n")
    assert load_documents(beir) == [Document("d1", "beir text", "T")]


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "b", "text": "unterminated', "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"text": "no id"}', "non-empty string 'id'"),
        ('{"id": "b"}', "needs a string 'text'"),
        ('{"id": "b", "text": "t", "title": 3}', "non-string 'title'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "docs.jsonl", [{"id": "a", "text": "fine"}, "", bad])
    with pytest.raises(DocumentError, match=message) as e:
        load_documents(path)
    assert str(e.value).startswith(f"{path}:3:")


def test_duplicate_id_names_both_lines(tmp_path):
    rows = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"_id": "a", "text": "z"}]
    path = write_lines(tmp_path / "docs.jsonl", rows)
    with pytest.raises(DocumentError, match=r"docs.jsonl:3: duplicate document id 'a' \(first seen at .*:1\)"):
        load_documents(path)


def test_empty_texts_are_skipped_and_counted(tmp_path, caplog):
    rows = [{"id": "a", "text": ""}, {"id": "b", "text": "  \n"}, {"id": "c", "text": "c"}]
    path = write_lines(tmp_path / "docs.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="grit.rag.documents"):
        docs = load_documents(path)
    assert [d.id for d in docs] == ["c"]
    assert "skipped 2 of 3 documents" in caplog.text


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(tmp_path / "missing")
    with pytest.raises(DocumentError, match="no .txt or .md files"):
        load_documents(tmp_path)
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DocumentError, match="expected a folder"):
        load_documents(tmp_path / "x.csv")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DocumentError, match="bad.txt: not UTF-8"):
        load_documents(tmp_path / "bad.txt")


CRANFIELD = SHARED_DATA / "retrieval/cranfield/corpus.jsonl"


@pytest.mark.skipif(not CRANFIELD.is_file(), reason="shared data sets are not present")
def test_cranfield_corpus(caplog):
    with caplog.at_level(logging.WARNING, logger="grit.rag.documents"):
        docs = load_documents(CRANFIELD)
    assert 1390 <= len(docs) <= 1400 and len({d.id for d in docs}) == len(docs)
    assert docs[0].id == "1" and docs[0].title.startswith("experimental investigation")
    assert all(d.text.strip() for d in docs)
