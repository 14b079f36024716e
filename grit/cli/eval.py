"""``grit eval MODEL --suite quick|full [--limit N] [--out DIR] [--baselines]``: the evaluation from the shell.

Wired into the main CLI with ``add_eval_command(subparsers)``; the parsed arguments carry ``handler``
(``eval_command``), as the other grit commands do.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path


def add_eval_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to a parser's subparsers; ``args.handler(args)`` runs it."""
    from grit.cli.common import MODEL_HELP, add_placement_options

    p = subparsers.add_parser(
        "eval",
        help="evaluate embedding, retrieval, classification and generation quality, offline",
        description="Run an evaluation suite on a model and write results.json and results.md.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument(
        "--suite",
        default="quick",  # checked by build_suite before the model loads (its error names the suites)
        help="quick: small samples (minutes); compare: trained models side by side (~30 min on 2 cores); "
        "standard: the committed baselines (~1.5 h); full: all data",
    )
    p.add_argument("--limit", type=positive_int, help="at most N examples per task (queries, pairs, test rows)")
    p.add_argument("--tasks", help="comma-separated task names to run (default: the whole suite)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/eval/<time>-<model>-<suite>)")
    p.add_argument("--baselines", action="store_true", help="also run all-MiniLM-L6-v2 and BM25 on the same tasks")
    p.add_argument("--data", type=Path, help="shared data folder (default: $GRIT_DATA or ../shared/data)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached corpus embeddings")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the results already in --out and skip the tasks they hold for the same model and settings",
    )
    add_placement_options(p)
    p.set_defaults(handler=eval_command)
    return p


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def eval_command(args: argparse.Namespace) -> int:
    """Load the model, build the suite, run it, print the table; returns 0. An unknown task name, suite or data
    folder raises ``ValueError`` / ``FileNotFoundError`` before the model is loaded."""
    from grit.cli.common import load_model
    from grit.eval.run import build_suite, default_baselines, run

    tasks = build_suite(args.suite, args.data, args.limit)
    if args.tasks:
        wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = sorted(set(wanted) - {t.name for t in tasks})
        if unknown:
            names = ", ".join(t.name for t in tasks)
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; suite {args.suite} has {names}")
        tasks = [t for t in tasks if t.name in wanted]
    model = load_model(args)
    baselines = default_baselines() if args.baselines else []
    if args.resume and not args.out:
        raise ValueError("--resume needs --out: the folder whose results to continue")
    out = args.out or default_out_dir(args.model, args.suite)
    run(model, tasks, out, baselines=baselines, use_cache=not args.no_cache, resume=args.resume)
    print((out / "results.md").read_text())
    return 0


def default_out_dir(model: str, suite: str) -> Path:
    """``runs/eval/<UTC time>-<model name>-<suite>``: a new folder per run, never overwriting an older one."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name.removesuffix(".gguf")) or "model"
    return Path("runs") / "eval" / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{name}-{suite}"
