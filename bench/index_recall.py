"""Approximate vs exact search on real corpora: recall@10 of each index kind and codec against exact float32 search,
with build time and query latency, same vectors, same run.

    python bench/index_recall.py                      # default model; Cranfield (1,400) and MS MARCO (2,000) corpora
    python bench/index_recall.py --tasks cranfield    # one corpus
    python bench/index_recall.py --encoder minilm     # all-MiniLM-L6-v2 vectors (minutes instead of an hour)

Vectors are the default model's embeddings of the corpora the ``standard`` eval suite uses (same texts, same
instructions), read from the eval embedding cache under $GRIT_CACHE/embeddings when `grit eval default --suite
standard` has run, computed (and cached) otherwise: ~25 minutes per corpus on 2 CPU cores. The reference is exact
inner-product search over float32 vectors in numpy; "recall@10" is the share of the exact top 10 that each index
returns in its top 10, averaged over the corpus's queries. ``--encoder minilm`` uses all-MiniLM-L6-v2 (the eval
baseline) instead: ANN recall depends on how the vectors are spread, and real text embeddings of either model are
the realistic case; the MiniLM run takes minutes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from grit import GritModel
from grit.embedding import normalize_rows
from grit.eval.cache import EmbeddingCache
from grit.eval.encoders import fingerprint, load_minilm, model_name
from grit.eval.run import build_suite
from grit.eval.tasks import encode
from grit.instructions import side
from grit.rag.store import StoreConfig, VectorStore

OUT = Path(__file__).resolve().parent / "results"
CONFIGS = [
    ("flat", "float32"),
    ("flat", "float16"),
    ("flat", "int8"),
    ("hnsw", "float32"),
    ("hnsw", "int8"),
    ("ivf", "float32"),
    ("ivf", "int8"),
]


def corpus_vectors(model, task) -> tuple[np.ndarray, np.ndarray]:
    _, queries, _, docs, _ = task.load()
    cache = EmbeddingCache(fingerprint(model))
    d = normalize_rows(encode(model, docs, side(task.instruction, "corpus"), cache))
    q = normalize_rows(encode(model, queries, side(task.instruction, "query"), cache))
    return d, q


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact, strict=True)]))


def measure(docs: np.ndarray, queries: np.ndarray, k: int = 10) -> list[dict]:
    exact = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :k]
    rows = []
    for kind, quantize in CONFIGS:
        store = VectorStore(StoreConfig(quantize=quantize, kind=kind))
        start = time.perf_counter()
        store.add(docs, np.arange(len(docs)))
        build = time.perf_counter() - start
        start = time.perf_counter()
        _, ids = store.search(queries, k)
        per_query = (time.perf_counter() - start) / len(queries)
        rows.append({"kind": store.kind, "quantize": quantize, "recall@10": recall_at(ids, exact, k),
                     "build_s": build, "query_ms": per_query * 1000})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a grit model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--encoder", choices=["grit", "minilm"], default="grit")
    parser.add_argument("--suite", default="standard", help="eval suite whose corpora are used (full: MS MARCO 5k)")
    parser.add_argument("--tasks", default="cranfield,msmarco-dl19-5k")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    model = GritModel.load(args.model) if args.encoder == "grit" else load_minilm()
    wanted = args.tasks.split(",")
    tasks = [t for t in build_suite(args.suite) if t.name in wanted]
    lines = [f"Vectors: {model_name(model)}; exact float32 inner-product search is the reference.", "",
             "| corpus | documents | queries | index | codec | recall@10 | build s | ms / query |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in tasks:
        docs, queries = corpus_vectors(model, task)
        docs, queries = docs.astype(np.float32), queries.astype(np.float32)
        for r in measure(docs, queries):
            lines.append(f"| {task.name} | {len(docs)} | {len(queries)} | {r['kind']} | {r['quantize']} | "
                         f"{r['recall@10']:.3f} | {r['build_s']:.2f} | {r['query_ms']:.3f} |")  # fmt: skip
            print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"index_recall-{args.encoder}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
