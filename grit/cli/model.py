"""`grit info | encode | similarity | chat | demo`: the model itself, from the shell.

grit info                                   model, dtype, threads, cache folder
grit encode --instruction I < lines.txt     one embedding per input line (JSON lines, or --out x.npy)
grit similarity "a" "b"                     cosine similarity
grit chat "question"                        streamed answer
grit demo                                   embed, compare and answer with the default model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from grit.cli.common import add_model_options, load_model

log = logging.getLogger("grit")

DEMO_SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The stock market fell sharply today.",
    "Shares dropped at the close of trading.",
]


def cmd_info(args: argparse.Namespace) -> None:
    from grit import loading

    model = load_model(args)
    facts: dict[str, object] = {"cache": str(loading.cache_root()), **model.placement.as_dict()}
    facts.update(
        model=str(model.path),
        identity=model.identity.id,
        architecture=model.lm.config.model_type,
        parameters=f"{sum(p.numel() for p in model.lm.parameters()) / 1e6:.1f}M",
        embedding_dim=model.dim,
        context=model.context_length,
    )
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}")


def read_lines(stream) -> list[str]:
    lines = stream.read().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"line {number} of the input is empty; give one non-empty text per line")
    return lines


def cmd_encode(args: argparse.Namespace) -> None:
    texts = read_lines(sys.stdin)
    model = load_model(args)
    vectors = model.encode(texts, args.instruction, batch_size=args.batch_size, max_length=args.max_length)
    if args.out:
        import numpy as np

        np.save(args.out, vectors)
        log.info("wrote %s %s to %s", vectors.shape, vectors.dtype, args.out)
        return
    for i, v in enumerate(vectors):
        print(json.dumps({"index": i, "embedding": [round(float(x), 7) for x in v]}))


def cmd_similarity(args: argparse.Namespace) -> None:
    print(f"{load_model(args).text_similarity(args.a, args.b, args.instruction):.4f}")


def cmd_chat(args: argparse.Namespace) -> None:
    model = load_model(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.question}
    ]
    for piece in model.chat(messages, max_new_tokens=args.max_new_tokens, temperature=args.temperature):
        print(piece, end="", flush=True)
    print()


def print_matrix(labels: list[str], matrix) -> None:
    print("      " + "".join(f"{i:>7d}" for i in range(len(labels))))
    for i, row in enumerate(matrix):
        print(f"{i:>4d}  " + "".join(f"{x:7.3f}" for x in row) + f"   {labels[i]}")


DEMO_DOCS = {
    "grit.md": "GRIT trains one language model to both embed text and generate text. Embedding inputs use "
    "bidirectional attention and mean pooling; generation uses causal attention.",
    "kv.md": "Retrieval-augmented generation can reuse the key/value cache computed while embedding a document, so "
    "the document is not run through the model again when answering.",
    "smollm.md": "SmolLM2-135M-Instruct is a small instruction-tuned language model with 135 million parameters, "
    "trained by Hugging Face.",
}


def demo_rag(model) -> None:
    from grit.rag import RAG, Document, Index

    index = Index.build([Document(i, t, "") for i, t in DEMO_DOCS.items()], model)
    rag = RAG(model, index)  # the model's own cache source: its free embedding caches once trained cache-aware
    question = "How many parameters does SmolLM2-135M-Instruct have?"
    result = rag.answer(question, k=1, cache="doc", max_new_tokens=48)
    hit = result.hits[0]
    print(f"\nRAG over {len(DEMO_DOCS)} documents, answering on top of the retrieved document's cached KV states:")
    print(f"Q: {question}\n   retrieved {hit.doc_id} (score {hit.score:.3f}); {result.cached_tokens} of "
          f"{result.prompt_tokens} prompt tokens came from the cache")  # fmt: skip
    print(f"A: {result.text.strip()}")


def cmd_demo(args: argparse.Namespace) -> None:
    model = load_model(args)
    print(f"model: {model.path} ({model.lm.config.model_type}, {str(model.dtype).removeprefix('torch.')})\n")
    vectors = model.encode(DEMO_SENTENCES, instruction="Retrieve semantically similar sentences")
    print("Cosine similarity (bidirectional attention, mean over text tokens):")
    print_matrix(DEMO_SENTENCES, vectors @ vectors.T)
    question = "What is the capital of France?"
    print(f"\nQ: {question}\nA: ", end="", flush=True)
    for piece in model.chat(question, max_new_tokens=64):
        print(piece, end="", flush=True)
    print()
    demo_rag(model)


def add_model_commands(sub) -> None:
    """Add info, encode, similarity, chat and demo to an argparse subparsers object."""

    def command(name: str, handler: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_model_options(p)
        p.set_defaults(handler=handler)
        return p

    command("info", cmd_info, "show the model, dtype, threads and cache folder")
    p = command("encode", cmd_encode, "embed one text per stdin line")
    p.add_argument("--instruction", default="", help="embedding instruction (GritLM format)")
    p.add_argument("--out", type=Path, help="write a .npy file instead of JSON lines on stdout")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p = command("similarity", cmd_similarity, "cosine similarity of two texts")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--instruction", default="")
    p = command("chat", cmd_chat, "answer a question, streaming")
    p.add_argument("question")
    p.add_argument("--system", default="", help="system message")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    command("demo", cmd_demo, "embed, compare and answer with one model")
