"""`grit index ...`: build, change and search a document index from the command line (usage in ``USAGE``).

``add_index_commands`` and ``add_rag_commands`` add them to grit's parser: each command sets ``args.handler``,
which prints its result and raises ValueError / OSError subclasses for user errors (grit's ``main`` prints those as
one line).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from grit.cli.common import add_model_options, load_model
from grit.instructions import DEFAULT_QUERY_INSTRUCTION
from grit.rag.chunking import ChunkConfig
from grit.rag.documents import load_documents
from grit.rag.manifest import is_index_folder, read_manifest
from grit.rag.modes import CACHE_MODES, CACHE_SOURCES
from grit.rag.store import CODECS, KINDS, StoreConfig

USAGE = """\
grit index build DOCS --out INDEX [--model M] [--chunk-tokens N] [--overlap N] [--quantize Q] [--kind K]
grit index add INDEX DOCS [--replace]          add documents (a folder, .jsonl or BEIR corpus.jsonl)
grit index delete INDEX ID...                  remove documents by id (loads no model)
grit index search INDEX "question" -k 5        a table of hits; --json for machine-readable output

`add` and `search` use the model the index was built with (its path is in manifest.json) unless --model is
given; another model is refused.
"""


def add_index_commands(subparsers) -> argparse.ArgumentParser:
    """Add the `index` command (with build / add / delete / search) to an argparse subparsers object."""
    parser = subparsers.add_parser("index", help="build and search a document index for RAG", description=USAGE,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="index_command", required=True)

    p = sub.add_parser("build", help="index documents into a new index folder")
    p.add_argument("docs", type=Path, help="folder of .txt/.md files, .jsonl {id,title,text}, or BEIR corpus.jsonl")
    p.add_argument("--out", type=Path, required=True, help="index folder to write")
    add_model_options(p, "HF folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--chunk-tokens", type=int, default=ChunkConfig.chunk_tokens, help="tokens per chunk")
    p.add_argument("--overlap", type=int, default=ChunkConfig.overlap_tokens, help="tokens shared by neighbours")
    p.add_argument("--quantize", choices=list(CODECS), default="float32", help="vector storage")
    p.add_argument("--kind", choices=KINDS, default="flat", help="flat: exact; hnsw, ivf: approximate (large corpora)")
    p.add_argument("--query-instruction", default=DEFAULT_QUERY_INSTRUCTION)
    p.add_argument("--doc-instruction", default="", help="instruction for documents (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    p.set_defaults(handler=cmd_build)

    p = sub.add_parser("add", help="add documents to an index")
    p.add_argument("index", type=Path)
    p.add_argument("docs", type=Path)
    add_model_options(p, "default: the index's model")
    p.add_argument("--replace", action="store_true", help="replace documents whose id is already indexed")
    p.set_defaults(handler=cmd_add)

    p = sub.add_parser("delete", help="remove documents from an index by id")
    p.add_argument("index", type=Path)
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(handler=cmd_delete)

    p = sub.add_parser("search", help="search an index")
    p.add_argument("index", type=Path)
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5, help="number of hits")
    p.add_argument("--per-document", action="store_true", help="only the best chunk of each document")
    p.add_argument("--json", action="store_true", help="print the hits as a JSON list")
    add_model_options(p, "default: the index's model")
    p.set_defaults(handler=cmd_search)
    return parser


def load_index_model(args: argparse.Namespace, index_folder: Path | None = None):
    """--model, else (for an existing index) the model folder recorded in its manifest."""
    path = args.model
    if path is None and index_folder is not None:
        model = read_manifest(index_folder)["model"]
        path = model.get("path")
        if not path or not Path(path).exists():
            raise FileNotFoundError(
                f"index {index_folder} was built with model {model['id']!r} from {path}, which is not there; "
                "pass --model with that model's folder"
            )
    return load_model(args, path)


def cmd_build(args: argparse.Namespace) -> None:
    from grit.rag.index import Index, IndexConfig

    if args.out.exists() and not (args.overwrite and is_index_folder(args.out)):
        what = "an index; pass --overwrite to replace it" if is_index_folder(args.out) else "not an index"
        raise FileExistsError(f"{args.out} already exists and is {what}")
    config = IndexConfig(  # configs are checked before the corpus is read and the model loaded
        chunking=ChunkConfig(args.chunk_tokens, args.overlap),
        store=StoreConfig(quantize=args.quantize, kind=args.kind),
        query_instruction=args.query_instruction,
        document_instruction=args.doc_instruction,
    )
    documents = load_documents(args.docs)
    if not documents:
        raise ValueError(f"{args.docs} holds no documents with text")
    model = load_index_model(args)
    if model.rag_cache_source == "bidirectional":
        index = build_keeping_caches(documents, model, config, args.out)
    else:
        index = Index.build(documents, model, config)
        index.save(args.out)
    print(
        f"indexed {index.num_documents} documents as {index.num_chunks} chunks "
        f"({index.kind}, {args.quantize}) into {args.out}{kept_caches_note(model, args.out)}"
    )


def build_keeping_caches(documents, model, config, out: Path):
    """``Index.build`` for a model that reads its own embedding caches (trained cache-aware): every chunk's cache
    comes from the embedding pass itself, staged beside ``out`` and moved into its KV store once the folder is
    written, so ``grit rag`` finds them all and computes none."""
    import os
    import shutil
    import tempfile

    from grit.rag.answer import RAG
    from grit.rag.index import Index
    from grit.rag.kvstore import KVStore, store_folder

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.kv-", dir=out.parent))
    try:
        index = Index(model, config)
        RAG(model, index, KVStore(staging), cache_source="bidirectional").add_documents(documents)
        index.save(out)
        target = store_folder(out, "bidirectional")
        target.mkdir(exist_ok=True)
        for path in staging.iterdir():
            os.replace(path, target / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return index


def kept_caches_note(model, folder: Path) -> str:
    if model.rag_cache_source != "bidirectional":
        return ""
    from grit.rag.kvstore import store_folder

    store = store_folder(folder, "bidirectional")
    files = len(list(store.glob("*.safetensors")))
    return f"; {store} holds {files} chunk caches, kept from the embedding pass (the model was trained to read them)"


def cmd_add(args: argparse.Namespace) -> None:
    from grit.rag.answer import RAG
    from grit.rag.index import Index

    documents = load_documents(args.docs)
    model = load_index_model(args, args.index)
    if model.rag_cache_source == "bidirectional":  # the new chunks' caches from their embedding pass, as build
        rag = RAG.open(args.index, model)
        added, index = rag.add_documents(documents, replace=args.replace), rag.index
    else:
        index = Index.load(args.index, model)
        added = index.add(documents, replace=args.replace)
    index.save(args.index)
    print(f"added {len(documents)} documents ({added} chunks); {args.index} has {index.num_documents} documents"
          f"{kept_caches_note(model, args.index)}")  # fmt: skip


def cmd_delete(args: argparse.Namespace) -> None:
    from grit.rag.index import Index

    index = Index.load(args.index)
    removed = index.delete(args.ids)
    index.save(args.index)
    print(f"deleted {len(set(args.ids))} documents ({removed} chunks); {args.index} has {index.num_documents} left")


def cmd_search(args: argparse.Namespace) -> None:
    from grit.rag.index import Index

    index = Index.load(args.index, load_index_model(args, args.index))
    hits = index.search(args.query, k=args.k, per_document=args.per_document)
    if args.json:
        print(json.dumps([asdict(h) for h in hits], indent=2, ensure_ascii=False))
    else:
        print(format_hits(hits))


def format_hits(hits, width: int = 100) -> str:
    """A fixed-width table: rank, score, document, chunk number, and the start of the chunk on one line."""
    if not hits:
        return "no hits (the index is empty)"
    doc_width = min(40, max(len("document"), *(len(h.doc_id) for h in hits)))
    lines = [f"{'rank':>4}  {'score':>6}  {'document':<{doc_width}}  {'chunk':>5}  text"]
    for rank, h in enumerate(hits, start=1):
        doc = h.doc_id if len(h.doc_id) <= doc_width else h.doc_id[: doc_width - 1] + "…"
        text = " ".join(h.text.split())
        text = text if len(text) <= width else text[: width - 1] + "…"
        lines.append(f"{rank:>4}  {h.score:6.3f}  {doc:<{doc_width}}  {h.number:>5}  {text}")
    return "\n".join(lines)


RAG_USAGE = """\
grit rag ask INDEX "question" [-k 1] [--cache none|doc|query|doc_query|query_doc] [--cache-source S]
grit rag cache INDEX [--cache-source S]        compute every chunk's KV cache ahead (kept in INDEX/kv-S/)
"""


def add_rag_commands(subparsers) -> argparse.ArgumentParser:
    """Add the `rag` command (ask / cache) to an argparse subparsers object."""
    parser = subparsers.add_parser("rag", help="answer questions from an index", description=RAG_USAGE,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="rag_command", required=True)
    sources = list(CACHE_SOURCES)
    p = sub.add_parser("ask", help="retrieve and answer, streaming")
    p.add_argument("index", type=Path)
    p.add_argument("question")
    p.add_argument("-k", type=int, default=1, help="documents (chunks) to answer from")
    p.add_argument("--cache", choices=CACHE_MODES, default="doc", help="which spans come from KV caches")
    source_help = ("causal: exact, one more pass per document; bidirectional: the embedding pass's states (free, "
                   "needs a model trained to read them); default: what the model records (bidirectional once "
                   "trained cache-aware, else causal)")  # fmt: skip
    p.add_argument("--cache-source", choices=sources, default=None, help=source_help)
    p.add_argument("--recompute-ratio", type=fraction, default=0.0,
                   help="share of the cached tokens recomputed across documents, those that deviate most "
                        "(CacheBlend): 0 joins the caches as they are, 1 is a full prefill")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--show-hits", action="store_true", help="print the retrieved chunks first")
    add_model_options(p, "default: the index's model")
    p.set_defaults(handler=cmd_ask)
    p = sub.add_parser("cache", help="compute the KV cache of every chunk ahead of questions")
    p.add_argument("index", type=Path)
    p.add_argument("--cache-source", choices=sources, default=None, help=source_help)
    add_model_options(p, "default: the index's model")
    p.set_defaults(handler=cmd_cache)
    return parser


def fraction(text: str) -> float:
    """A number from 0 to 1 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def _rag(args: argparse.Namespace):
    from grit.rag.answer import RAG

    return RAG.open(args.index, load_index_model(args, args.index), args.cache_source)


def cmd_ask(args: argparse.Namespace) -> None:
    rag = _rag(args)
    hits, stream = rag.stream(args.question, k=args.k, cache=args.cache, max_new_tokens=args.max_new_tokens,
                              recompute_ratio=args.recompute_ratio)  # fmt: skip
    if args.show_hits:
        print(format_hits(hits) + "\n")
    for piece in stream.pieces:
        print(piece, end="", flush=True)
    print()


def cmd_cache(args: argparse.Namespace) -> None:
    rag = _rag(args)
    report = rag.cache_index(progress=True)
    size = rag.kv_store.disk_bytes()
    per_thousand = size / max(report.tokens, 1) * 1000 / 1e6
    print(f"{rag.index.num_chunks} chunks: {report.reused} cached already, {report.computed} computed, "
          f"{report.evicted} stale evicted; {report.tokens} tokens, {size / 1e6:.1f} MB on disk "
          f"({per_thousand:.1f} MB per 1,000 tokens) in {rag.kv_store.folder}")  # fmt: skip
