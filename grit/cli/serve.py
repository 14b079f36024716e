"""`grit serve`: run the OpenAI-compatible server (usage in ``USAGE``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import get_type_hints

from grit.cli.common import MODEL_HELP, add_model_options
from grit.rag.modes import CACHE_SOURCES
from grit.serve.config import ServeConfig, choices_of

USAGE = """\
grit serve [--model M] [--host 127.0.0.1] [--port 8000] [--index INDEX] [--api-key KEY]

Serves, from one process and one copy of the weights:
  GET  /health                 liveness, requests in progress
  GET  /v1/models              the served model
  POST /v1/embeddings          OpenAI embeddings (float or base64, `dimensions`; extension: `instruction`)
  POST /v1/chat/completions    chat, streaming with `stream: true`
  POST /v1/completions         plain text completion (one prompt, or several answered together)
  POST /v1/rag                 with --index: retrieve and answer {"question", "k", "cache", "max_tokens", "stream"}
  GET  /metrics                Prometheus text format: requests, tokens, queues, batch sizes, latencies

Use it with the official client:  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")
The API key can also come from $GRIT_API_KEY or --api-key-file (both keep it out of `ps`). A non-loopback --host
without a key is refused unless --allow-no-key is given.
"""


def add_serve_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve embeddings and chat over an OpenAI-compatible API",
                              description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_model_options(p, MODEL_HELP + "; with --index, default: the index's model")
    p.add_argument("--index", type=Path, help="an index folder from `grit index build`: adds POST /v1/rag")
    p.add_argument("--cache-source", choices=CACHE_SOURCES, default=None,
                   help="RAG document caches (see `grit rag ask --help`); default: the model's")  # fmt: skip
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` (visible in `ps`: prefer "
                   "$GRIT_API_KEY or --api-key-file)")  # fmt: skip
    p.add_argument("--api-key-file", type=Path, help="read the API key from the first line of this file")
    p.add_argument("--allow-no-key", action="store_true",
                   help="serve a non-loopback address without an API key (refused otherwise)")  # fmt: skip
    for f, flag, tp in config_options():
        if tp == "bool":  # --metrics / --no-metrics
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                           help=f"{f.metadata['help']} (default: {'on' if f.default else 'off'})")  # fmt: skip
            continue
        kind = {"int": int, "float": float}.get(tp, str)  # a Literal's values are strings (CacheMode)
        choices = choices_of(get_type_hints(ServeConfig)[f.name])
        p.add_argument(flag, dest=f.name, type=kind, default=f.default, choices=choices,
                       help=f"{f.metadata['help']} (default: {f.default!r})")  # fmt: skip
    p.set_defaults(handler=cmd_serve)
    return p


def config_options():
    """(field, flag, type name) of every ServeConfig field the command line offers."""
    for f in dataclasses.fields(ServeConfig):
        if f.metadata.get("cli", True):
            yield f, f.metadata.get("flag") or "--" + f.name.replace("_", "-"), str(f.type)


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


def load_served(args: argparse.Namespace):
    """The RAG over ``--index`` (with its model), or None without an index."""
    if args.index is None:
        return None
    from grit.cli.rag import load_index_model
    from grit.rag.answer import RAG

    return RAG.open(args.index, load_index_model(args, args.index), args.cache_source)


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    import uvicorn

    from grit.cli.common import load_model
    from grit.serve.app import create_app
    from grit.serve.connections import uvicorn_config
    from grit.serve.scheduler import ModelThread

    api_key = args.api_key or read_key_file(args.api_key_file) or os.environ.get("GRIT_API_KEY") or None
    if args.host not in LOOPBACK and not api_key and not args.allow_no_key:
        raise ValueError(
            f"--host {args.host} serves the model to the network without an API key; set $GRIT_API_KEY or "
            "--api-key-file, or pass --allow-no-key to do it anyway"
        )
    config = ServeConfig(api_key=api_key, **{f.name: getattr(args, f.name) for f, _, _ in config_options()})
    # Loaded on the thread that will run every forward pass: torch's parallel work then has one thread pool in the
    # whole process (grit.serve.scheduler's module doc says why that matters).
    model_thread = ModelThread()
    rag = model_thread.call(load_served, args)
    model = rag.model if rag is not None else model_thread.call(load_model, args)
    if config.host not in LOOPBACK and not config.api_key:
        logging.getLogger("grit.serve").warning("serving on %s without an API key (--allow-no-key)", config.host)
    app = create_app(model, config, rag, model_thread)
    uvicorn.Server(uvicorn_config(app, config)).run()
