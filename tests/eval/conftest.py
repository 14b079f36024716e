"""A miniature copy of ``shared/data`` (same layout, a few real rows of each set) for end-to-end eval tests.

Rows are the shortest of each file, so prompts fit the tiny test model's 512-token context.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from grit.splits import is_held_out

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # as in tests/conftest.py


def read_rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def shortest(rows: list[dict], n: int, size) -> list[dict]:
    return sorted(rows, key=size)[:n]


def mini_beir(src: Path, dst: Path, n_queries: int = 3, n_extra_docs: int = 8) -> None:
    """The first judged queries, the documents judged for them (at most 4 each) and a few unjudged ones, their text
    cut to 300 characters."""
    lines = (src / "qrels" / "test.tsv").read_text().splitlines()
    qrels = [line.split("\t") for line in lines[1:]]
    queries = list(dict.fromkeys(q for q, _, _ in qrels))[:n_queries]
    kept = [r for q in queries for r in [r for r in qrels if r[0] == q][:4]]
    docs = {d for _, d, _ in kept}
    corpus = [{**d, "text": d["text"][:300]} for d in read_rows(src / "corpus.jsonl")]  # short: a quick encode
    extra = [d for d in corpus if d["_id"] not in docs][:n_extra_docs]
    write_rows(dst / "corpus.jsonl", [d for d in corpus if d["_id"] in docs] + extra)
    write_rows(dst / "queries.jsonl", [q for q in read_rows(src / "queries.jsonl") if q["_id"] in queries])
    (dst / "qrels").mkdir(parents=True)
    (dst / "qrels" / "test.tsv").write_text("\n".join([lines[0], *("\t".join(r) for r in kept)]) + "\n")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ``shared/data``; skips when it is not on this machine."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def eval_data(shared_data, tmp_path_factory) -> Path:
    """``shared/data`` in miniature (skips when the shared data is not on this machine)."""
    root = tmp_path_factory.mktemp("shared-data")
    sts = read_rows(SHARED_DATA / "sts" / "stsb-test.jsonl")
    write_rows(root / "sts" / "stsb-test.jsonl", sts[:: len(sts) // 8][:8])  # spread over genres and scores
    for name in ("cranfield", "msmarco-dl19-5k"):
        mini_beir(SHARED_DATA / "retrieval" / name, root / "retrieval" / name)
    for name, labels in (("banking77", 3), ("sst2", 2)):
        for split in ("train", "test"):
            rows = read_rows(SHARED_DATA / "classification" / name / f"{split}.jsonl")
            keep = sorted({r["label"] for r in rows})[:labels]
            per_label = [[r for r in rows if r["label"] == label][: 12 // labels] for label in keep]
            write_rows(root / "classification" / name / f"{split}.jsonl", [r for group in per_label for r in group])
    # The suites score only the rows grit.splits holds out of training in these files: keep held-out ones.
    gsm = [r for r in read_rows(SHARED_DATA / "generative" / "gsm8k_train.jsonl") if is_held_out(r)]
    write_rows(root / "generative" / "gsm8k_train.jsonl", shortest(gsm, 4, lambda r: len("".join(r["text"]))))
    p3 = read_rows(SHARED_DATA / "generative" / "p3_t0_mix.jsonl.gz")
    p3 = [r for r in p3 if r["text"][-1].strip() and is_held_out(r)]
    write_rows(root / "generative" / "p3_t0_mix.jsonl.gz", shortest(p3, 4, lambda r: len(r["text"][0])))
    rag = sorted(read_rows(SHARED_DATA / "rag" / "adversarialqa.jsonl"), key=lambda r: len(r["passage"]))
    questions = [r for r in rag if is_held_out(r)][:4]
    distractors = [r for r in rag if not is_held_out(r)][:2]
    write_rows(root / "rag" / "adversarialqa.jsonl", questions + distractors)
    hotpot = sorted(read_rows(SHARED_DATA / "rag" / "hotpotqa_multidoc.jsonl"), key=lambda r: len(r["passage"]))
    short = [dict(r, passages=[dict(p, text=p["text"][:300]) for p in r["passages"][:4]])
             for r in hotpot if is_held_out(r) and all(i < 4 for i in r["supporting"])][:3]  # fmt: skip
    write_rows(root / "rag" / "hotpotqa_multidoc.jsonl", short)
    shutil.copy(SHARED_DATA / "MANIFEST.md", root / "MANIFEST.md")
    return root
