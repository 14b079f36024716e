"""RAG latency by cache mode, as in the GRIT paper's figure: one model, one retrieved document, 16 new tokens.

    python bench/rag_latency.py                                   # default model, full grid, 5 repeats
    python bench/rag_latency.py --doc-tokens 250 1000 --query-tokens 1 --repeats 3

For each document length and question length, an index holding that one document is built and its KV cache is
made ready ahead (offline, as in the paper; its cost is reported apart: with bidirectional caches it is the
embedding pass itself, ``RAG.add_documents``, with causal ones one more pass). A timed run is the whole answer:
embed the question (retrieval needs it in every mode), search, assemble the prompt, generate exactly 16 tokens.
Modes are run in turn inside each repeat, so machine noise spreads evenly; the median of the repeats is reported,
with the ratio against ``none`` measured in the same run. Text is real: Cranfield abstracts and queries from
../shared/data. Writes bench/results/rag_latency.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from grit import GritModel
from grit.rag.answer import CACHE_MODES, RAG
from grit.rag.chunking import ChunkConfig
from grit.rag.documents import Document
from grit.rag.index import Index, IndexConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "retrieval" / "cranfield"
OUT = Path(__file__).resolve().parent / "results"


def real_text(model: GritModel, file: str, field: str, tokens: int) -> str:
    """Cranfield texts joined until they make ``tokens`` tokens, cut exactly there."""
    path = SHARED / file
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the benchmark reads real text from ../shared/data")
    texts = [json.loads(line)[field] for line in path.open()]
    ids: list[int] = []
    for t in texts:
        ids += model.tokenizer(t + "\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            return model.tokenizer.decode(ids[:tokens])
    raise SystemExit(f"not enough text in {path} for {tokens} tokens")


def measure(
    model, doc_tokens: int, query_tokens: int, modes, repeats: int, new_tokens: int, source: str
) -> dict[str, float]:
    doc = Document("doc", real_text(model, "corpus.jsonl", "text", doc_tokens), "")
    question = real_text(model, "queries.jsonl", "text", query_tokens)
    config = IndexConfig(chunking=ChunkConfig(chunk_tokens=doc_tokens + 16, overlap_tokens=0),
                         max_length=model.context_length)  # fmt: skip
    rag, indexing = ready_rag(model, doc, config, source)

    def run(mode: str) -> float:
        start = time.perf_counter()
        rag.answer(question, k=1, cache=mode, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        return time.perf_counter() - start

    for mode in modes:  # warm-up
        run(mode)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeats):
        for mode in modes:
            times[mode].append(run(mode))
    return {m: statistics.median(t) for m, t in times.items()}, indexing


def ready_rag(model, doc: Document, config: IndexConfig, source: str) -> tuple[RAG, dict[str, float]]:
    """A RAG over ``doc`` with its cache ready, and what the offline step cost: seconds to index the document
    (the embedding pass alone, as any embedding index does) and to index it with its KV cache, which for
    bidirectional caches is that same pass (``RAG.add_documents`` keeps its states) and for causal ones one more."""
    Index.build([Document("warm", doc.text[:200], "")], model, config)  # first-call costs, untimed
    start = time.perf_counter()
    Index.build([doc], model, config)
    embedding_only = time.perf_counter() - start
    start = time.perf_counter()
    index = Index(model, config)
    rag = RAG(model, index, cache_source=source)
    rag.add_documents([doc])
    report = rag.cache_documents(index.all_chunks())
    with_cache = time.perf_counter() - start
    return rag, {"embedding_only": embedding_only, "with_cache": with_cache, "caches_computed": report.computed}


def index_cell(indexing: dict) -> str:
    ratio = indexing["with_cache"] / indexing["embedding_only"]
    return (f"{indexing['embedding_only']:.2f} → {indexing['with_cache']:.2f} ({ratio:.2f}x; "
            f"{indexing['caches_computed']} computed)")  # fmt: skip


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r.get("cache_source", "causal"), r["query_tokens"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (source, q) in zip(axes[0], panels, strict=True):
        sub = [r for r in rows if r["query_tokens"] == q and r.get("cache_source", "causal") == source]
        for mode in sub[0]["seconds"]:
            ax.plot([r["doc_tokens"] for r in sub], [r["seconds"][mode] for r in sub], marker="o", label=mode)
        ax.set(title=f"{q}-token question, {source} caches", xlabel="document tokens", ylabel="seconds (median)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle("RAG latency by cache mode (16 new tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--doc-tokens", type=int, nargs="+", default=[250, 1000, 2000, 4000])
    parser.add_argument("--query-tokens", type=int, nargs="+", default=[1, 500])
    parser.add_argument("--modes", nargs="+", default=list(CACHE_MODES), choices=CACHE_MODES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--cache-source", choices=["causal", "bidirectional"], default="causal",
                        help="causal: exact caches, but a cached question costs one more (causal) pass over it; "
                        "bidirectional: the embedding pass's own states, free, as in the paper")  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    modes = ["none", *[m for m in args.modes if m != "none"]]

    model = GritModel.load(args.model, dtype=args.dtype)
    rows = []
    for q in args.query_tokens:
        for d in args.doc_tokens:
            seconds, indexing = measure(model, d, q, modes, args.repeats, args.new_tokens, args.cache_source)
            rows.append({"doc_tokens": d, "query_tokens": q, "cache_source": args.cache_source,
                         "repeats": args.repeats, "seconds": seconds, "indexing": indexing})  # fmt: skip
            cells = "  ".join(f"{m} {s:6.2f}s ({s / seconds['none']:.2f}x)" for m, s in seconds.items())
            print(f"doc {d:5d}  query {q:5d}  {cells}  index {index_cell(indexing)}", flush=True)

    # Runs add to earlier ones (another grid, another cache source); a repeated cell replaces its old value.
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "rag_latency.json"
    key = lambda r: (r["doc_tokens"], r["query_tokens"], r.get("cache_source", "causal"))  # noqa: E731
    earlier = {key(r): r for r in (json.loads(saved.read_text()) if saved.is_file() else [])}
    rows = sorted({**earlier, **{key(r): r for r in rows}}.values(), key=lambda r: (key(r)[2], key(r)[1], key(r)[0]))
    dtype = str(model.dtype).removeprefix("torch.")
    header = (f"Model {model.path.name}, {dtype}, {torch.get_num_threads()} threads; {args.new_tokens} new tokens; "
              "cells: median seconds (ratio to `none` in the same run).")  # fmt: skip
    modes = list(CACHE_MODES)
    header += (" Indexing: seconds to embed the document alone, then to embed it and have its KV cache ready "
               "(ratio to the first; caches computed beyond the embedding pass).")  # fmt: skip
    lines = [header, "", "| cache source | doc tokens | query tokens | repeats | " + " | ".join(modes) +
             " | indexing |", "|---" * (len(modes) + 5) + "|"]  # fmt: skip
    for r in rows:
        none = r["seconds"]["none"]
        cells = " | ".join(f"{r['seconds'][m]:.2f} ({r['seconds'][m] / none:.2f}x)" if m in r["seconds"] else "-"
                           for m in modes)  # fmt: skip
        indexing = index_cell(r["indexing"]) if "indexing" in r else "-"
        lines.append(f"| {r.get('cache_source', 'causal')} | {r['doc_tokens']} | {r['query_tokens']} | "
                     f"{r.get('repeats', '')} | {cells} | {indexing} |")  # fmt: skip
    (args.out / "rag_latency.md").write_text("\n".join(lines) + "\n")
    saved.write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "rag_latency.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
