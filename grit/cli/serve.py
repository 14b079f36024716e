"""`grit serve`: run the OpenAI-compatible server (usage in ``USAGE``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from grit.cli.common import MODEL_HELP, add_model_options
from grit.serve.config import ServeConfig

USAGE = """\
grit serve [--model M] [--host 127.0.0.1] [--port 8000] [--index INDEX] [--api-key KEY]

Serves, from one process and one copy of the weights:
  GET  /health                 liveness, requests in progress
  GET  /v1/models              the served model
  POST /v1/embeddings          OpenAI embeddings (float or base64, `dimensions`; extension: `instruction`)
  POST /v1/chat/completions    chat, streaming with `stream: true`
  POST /v1/completions         plain text completion (one prompt, or several answered together)
  POST /v1/rag                 with --index: retrieve and answer {"question", "k", "cache", "max_tokens", "stream"}

Use it with the official client:  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")
The API key can also come from $GRIT_API_KEY or --api-key-file (both keep it out of `ps`). A non-loopback --host
without a key is refused unless --allow-no-key is given.
"""


def add_serve_command(subparsers) -> argparse.ArgumentParser:
    defaults = ServeConfig()
    p = subparsers.add_parser("serve", help="serve embeddings and chat over an OpenAI-compatible API",
                              description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_model_options(p, MODEL_HELP + "; with --index, default: the index's model")
    p.add_argument("--host", default=defaults.host, help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=defaults.port)
    p.add_argument("--index", type=Path, help="an index folder from `grit index build`: adds POST /v1/rag")
    p.add_argument("--cache-source", choices=["causal", "bidirectional"], default="causal",
                   help="RAG document caches (see `grit rag ask --help`)")  # fmt: skip
    p.add_argument("--rag-cache", default=defaults.rag_cache, help="RAG cache mode when a request names none")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` (visible in `ps`: prefer "
                   "$GRIT_API_KEY or --api-key-file)")  # fmt: skip
    p.add_argument("--api-key-file", type=Path, help="read the API key from the first line of this file")
    p.add_argument("--allow-no-key", action="store_true",
                   help="serve a non-loopback address without an API key (refused otherwise)")  # fmt: skip
    p.add_argument("--model-name", default="", help="the model id clients send (default: the model folder's name)")
    p.add_argument("--instruction", default="", help="embedding instruction when a request names none")
    p.add_argument("--max-pending", type=int, default=defaults.max_pending,
                   help="requests in progress at once; more get 503 with Retry-After")  # fmt: skip
    p.add_argument("--max-inputs", type=int, default=defaults.max_inputs, help="texts per embeddings request")
    p.add_argument("--max-input-tokens", type=int, default=0, help="tokens per embedding input (0: context length)")
    p.add_argument("--max-tokens-cap", type=int, default=defaults.max_tokens_cap, help="largest max_tokens allowed")
    p.add_argument("--max-prompts", type=int, default=defaults.max_prompts,
                   help="prompts per completions request (decoded together)")  # fmt: skip
    p.add_argument("--max-batch-texts", type=int, default=defaults.max_batch_texts,
                   help="texts one embedding batch gathers from queued requests")  # fmt: skip
    p.add_argument(
        "--request-timeout",
        type=float,
        default=defaults.request_timeout_s,
        help="seconds a request may take to arrive whole (headers and body); then the connection closes",
    )
    p.add_argument(
        "--keep-alive",
        type=int,
        default=defaults.keep_alive_s,
        help="seconds an idle kept-alive connection stays open",
    )
    p.add_argument("--max-connections", type=int, default=defaults.max_connections,
                   help="open connections at once; a request past them gets 503")  # fmt: skip
    p.set_defaults(handler=cmd_serve)
    return p


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def read_key_file(path: Path | None) -> str | None:
    """The key on the first line of ``path`` (None without a path); an empty file is an error, not "no key"."""
    if path is None:
        return None
    lines = path.read_text().splitlines()
    key = lines[0].strip() if lines else ""
    if not key:
        raise ValueError(f"--api-key-file {path} is empty")
    return key


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    import uvicorn

    from grit.cli.common import load_model
    from grit.serve.app import create_app
    from grit.serve.connections import uvicorn_config

    api_key = args.api_key or read_key_file(args.api_key_file) or os.environ.get("GRIT_API_KEY") or None
    if args.host not in LOOPBACK and not api_key and not args.allow_no_key:
        raise ValueError(
            f"--host {args.host} serves the model to the network without an API key; set $GRIT_API_KEY or "
            "--api-key-file, or pass --allow-no-key to do it anyway"
        )
    config = ServeConfig(
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        api_key=api_key,
        max_pending=args.max_pending,
        max_inputs=args.max_inputs,
        max_input_tokens=args.max_input_tokens,
        max_tokens_cap=args.max_tokens_cap,
        max_prompts=args.max_prompts,
        max_batch_texts=args.max_batch_texts,
        default_instruction=args.instruction,
        rag_cache=args.rag_cache,
        request_timeout_s=args.request_timeout,
        keep_alive_s=args.keep_alive,
        max_connections=args.max_connections,
    )
    rag = None
    if args.index is not None:
        from grit.cli.rag import load_index_model
        from grit.rag.answer import RAG

        rag = RAG.open(args.index, load_index_model(args, args.index), args.cache_source)
        model = rag.model
    else:
        model = load_model(args)
    if config.host not in LOOPBACK and not config.api_key:
        logging.getLogger("grit.serve").warning("serving on %s without an API key (--allow-no-key)", config.host)
    app = create_app(model, config, rag)
    uvicorn.Server(uvicorn_config(app, config)).run()
