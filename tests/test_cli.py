import io
import json

import numpy as np

from grit.cli import main


def run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_encode_jsonl_matches_api(tiny_model_path, tiny_grit, capsys, monkeypatch):
    code, out, _ = run(
        ["encode", "--model", str(tiny_model_path), "--dtype", "float32", "--instruction", "Find"],
        capsys,
        "first line\nsecond line\n",
        monkeypatch,
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    expected = tiny_grit.encode(["first line", "second line"], instruction="Find")
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-6)


def test_encode_npy(tiny_model_path, tmp_path, capsys, monkeypatch):
    out = tmp_path / "e.npy"
    code, _, _ = run(["encode", "--model", str(tiny_model_path), "--out", str(out)], capsys, "a\nb\nc\n", monkeypatch)
    assert code == 0 and np.load(out).shape == (3, 64)


def test_empty_input_line_is_named(tiny_model_path, capsys, monkeypatch):
    code, _, err = run(["encode", "--model", str(tiny_model_path)], capsys, "a\n\nc\n", monkeypatch)
    assert code == 2 and "line 2 of the input is empty" in err


def test_missing_model_is_one_line(tmp_path, capsys):
    code, _, err = run(["similarity", "a", "b", "--model", str(tmp_path / "missing")], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "does not exist" in err and "Traceback" not in err


def test_info_similarity_chat(tiny_model_path, capsys):
    m = ["--model", str(tiny_model_path)]
    code, out, _ = run(["info", *m], capsys)
    assert code == 0 and "architecture" in out and "llama" in out and "cache" in out
    code, out, _ = run(["similarity", "same", "same", *m], capsys)
    assert code == 0 and float(out) > 0.9999
    code, out, _ = run(["chat", "hello", "--max-new-tokens", "4", *m], capsys)
    assert code == 0 and out.endswith("\n")
