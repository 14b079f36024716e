import json

import pytest

from grit.cli import main
from grit.cli.rag import format_hits
from grit.rag.index import Hit, Index


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    (folder / "ops").mkdir(parents=True)
    (folder / "ops" / "keys.md").write_text("# Rotating keys\n\nRotate the API key every month from the console.\n")
    (folder / "bread.txt").write_text("Sourdough rises because wild yeast ferments the dough.")
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "tides", "title": "Tides", "text": "The moon pulls the ocean."}) + "\n")
    return folder, more


def run(capsys, *argv):
    code = main(["index", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_build_add_search_delete(tiny_model_path, docs, tmp_path, capsys):
    folder, more = docs
    index = tmp_path / "idx"
    model = ["--model", tiny_model_path, "--dtype", "float32", "--device", "cpu"]
    code, out, err = run(capsys, "build", folder, "--out", index, *model, "--chunk-tokens", 16, "--overlap", 4,
                         "--quantize", "int8", "--kind", "hnsw")  # fmt: skip
    assert code == 0, err
    assert "indexed 2 documents" in out and "(hnsw, int8)" in out

    code, out, err = run(capsys, "add", index, more)  # model taken from the manifest
    assert code == 0 and out.endswith("has 3 documents\n"), err

    code, out, _ = run(capsys, "search", index, "rotate the key", "-k", 20, "--json", "--per-document")
    hits = json.loads(out)
    assert code == 0 and sorted(h["doc_id"] for h in hits) == ["bread.txt", "ops/keys.md", "tides"]
    assert {"doc_id", "number", "score", "text", "title", "start", "end"} <= set(hits[0])

    code, out, err = run(capsys, "delete", index, "tides", "bread.txt")
    assert code == 0 and "deleted 2 documents" in out, err
    code, out, _ = run(capsys, "search", index, "rotate the key", "-k", 2)
    assert code == 0 and out.splitlines()[0].split() == ["rank", "score", "document", "chunk", "text"]
    assert all("ops/keys.md" in line for line in out.splitlines()[1:])


def test_user_errors_are_one_line(tiny_model_path, docs, tmp_path, capsys):
    folder, _ = docs
    code, _, err = run(capsys, "build", folder, "--out", folder, "--model", tiny_model_path)
    assert code == 2 and "already exists and is not an index" in err
    code, _, err = run(capsys, "build", folder, "--out", tmp_path / "i", "--chunk-tokens", 4, "--overlap", 4)
    assert code == 2 and "overlap_tokens must be" in err
    code, _, err = run(capsys, "search", tmp_path / "nothing", "q")
    assert code == 2 and "does not exist" in err
    index = Index(None).save(tmp_path / "idx")  # an empty index folder, made without loading a model
    code, _, err = run(capsys, "build", folder, "--out", index, "--model", tiny_model_path)
    assert code == 2 and "pass --overwrite" in err
    code, _, err = run(capsys, "delete", index, "missing.md")
    assert code == 2 and "not in the index: 'missing.md'" in err and "Traceback" not in err
    assert run(capsys, "build", folder, "--out", index, "--model", tiny_model_path, "--overwrite")[0] == 0
    assert Index.load(index).num_documents == 2


def test_table_format():
    hit = Hit("a/very/long/" + "x" * 60, 3, 0.87654, "line one\nline two " + "y" * 200, "T", 0, 10)
    lines = format_hits([hit]).splitlines()
    assert lines[1].split()[:4] == ["1", "0.877", "a/very/long/" + "x" * 27 + "…", "3"]
    assert "line one line two" in lines[1] and lines[1].endswith("…")
    assert format_hits([]) == "no hits (the index is empty)"
