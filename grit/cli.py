"""The `grit` command line: one model for embeddings and chat.

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

import numpy as np

log = logging.getLogger("grit")

EXPECTED_ERRORS = (FileNotFoundError, ValueError, TypeError, OSError)
DEMO_SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The stock market fell sharply today.",
    "Shares dropped at the close of trading.",
]


MODEL_HELP = (
    "HF folder, .gguf file or LoRA adapter folder; 'default' (also when left out): SmolLM2-135M-Instruct with "
    "grit's GRIT adapter; 'base': SmolLM2-135M-Instruct alone"
)


def model_source(name: str | None) -> dict:
    """``GritModel.load`` arguments for a model named on the command line: a path, or 'default' / 'base'."""
    if name in (None, "default"):
        return {"path": None}
    if name == "base":
        return {"path": None, "base_only": True}
    return {"path": name}


def add_model_options(parser: argparse.ArgumentParser, model_help: str = MODEL_HELP) -> None:
    parser.add_argument("--model", default=None, help=model_help)
    add_placement_options(parser)


def add_placement_options(parser: argparse.ArgumentParser) -> None:
    auto = "auto: $GRIT_{} when set, else"
    parser.add_argument(
        "--dtype",
        default="auto",
        help=f"auto | float32 | bfloat16 | float16 ({auto.format('DTYPE')} "
        "the fastest native dtype: bfloat16 on GPUs and AMX/AVX512-BF16 CPUs, float32 elsewhere)",
    )
    parser.add_argument("--device", default="auto", help=f"auto | cpu | cuda[:N] ({auto.format('DEVICE')} the first "
                        "GPU if any)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: $GRIT_THREADS, else torch's)")


def placement(args: argparse.Namespace):
    """The command's device, dtype and threads, resolved once (``grit.hardware``); a bad value is a ValueError."""
    from grit import hardware

    return hardware.resolve_placement(args.device, args.dtype, getattr(args, "threads", None))


def load_model(args: argparse.Namespace, name: str | None = None):
    """The model named by ``name`` (default ``--model``), on the command's placement."""
    from grit import GritModel

    return GritModel.load(**model_source(name if name is not None else args.model), placement=placement(args))


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


def print_matrix(labels: list[str], matrix: np.ndarray) -> None:
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
    rag = RAG(model, index, cache_source="causal")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grit", description="One language model for embeddings and generation.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

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
    # Feature commands live beside their features; imported here so `import grit.cli` stays light for them.
    from grit.eval.cli import add_eval_command
    from grit.eval.report import add_report_command
    from grit.rag.cli import add_index_commands, add_rag_commands
    from grit.serve.cli import add_serve_command
    from grit.train.cli import add_train_commands

    add_index_commands(sub)
    add_rag_commands(sub)
    add_eval_command(sub)
    add_report_command(sub)
    add_train_commands(sub)
    add_serve_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.handler(args)
    except EXPECTED_ERRORS as e:
        print(f"grit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
