"""The `grit` command line: a leaf package over grit's features (no feature package imports it).

    grit info | encode | similarity | chat | demo     the model itself                 grit/cli/model.py
    grit index build | add | delete | search         a document index                 grit/cli/rag.py
    grit rag ask | cache                             answers from an index            grit/cli/rag.py
    grit eval / grit report                          evaluation and its tables        grit/cli/eval.py, report.py
    grit train / grit plot-loss                      training                         grit/cli/train.py
    grit serve                                       the OpenAI-compatible server     grit/cli/serve.py

Shared options (model, device, dtype, threads) live in grit/cli/common.py. Every command module imports its feature
only inside its handlers, so building the parser (``grit --help``) loads no torch. Errors grit expects are one line,
``grit: error: ...``, exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXPECTED_ERRORS = (FileNotFoundError, ValueError, TypeError, OSError)


def build_parser() -> argparse.ArgumentParser:
    from grit.cli.eval import add_eval_command
    from grit.cli.model import add_model_commands
    from grit.cli.rag import add_index_commands, add_rag_commands
    from grit.cli.report import add_report_command
    from grit.cli.serve import add_serve_command
    from grit.cli.train import add_train_commands

    parser = argparse.ArgumentParser(prog="grit", description="One language model for embeddings and generation.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    add_model_commands(sub)
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
