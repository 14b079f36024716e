"""``grit train CONFIG [key=value ...]`` and ``grit plot-loss RUN_DIR``.

    grit train configs/toy-unified.yaml                        # train; prints the final model folder
    grit train configs/toy-unified.yaml lr=1e-4 lora.r=8 max_steps=5 output_dir=runs/try
    torchrun --nproc-per-node 2 -m grit.cli train configs/toy-unified.yaml
    grit plot-loss runs/toy-unified                            # writes runs/toy-unified/loss.png

Wire into a parser with ``add_train_commands(subparsers)``; each command sets ``args.handler(args)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def options_help() -> str:
    from grit.train.config import TrainConfig

    lines = ["options (key=value; nested with dots):"]
    for name, type_name, default, help in TrainConfig.options():
        lines.append(f"  {name} ({type_name}, default {default!r}): {help}")
    return "\n".join(lines)


def add_train_commands(subparsers) -> None:
    """Add ``train`` and ``plot-loss`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "train",
        help="train embedding, generation or both (GRIT) from a YAML/JSON config",
        description="Train a GRIT model. Restarting the same command resumes from the newest checkpoint.",
        epilog=options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="YAML or JSON config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override options, e.g. lr=1e-4 lora.r=8")
    p.set_defaults(handler=cmd_train)

    p = subparsers.add_parser("plot-loss", help="draw a run's loss curves into RUN_DIR/loss.png")
    p.add_argument("run_dir", type=Path, help="the output_dir of a training run (holds log.jsonl)")
    p.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/loss.png)")
    p.set_defaults(handler=cmd_plot_loss)


def cmd_train(args: argparse.Namespace) -> None:
    from grit.train.config import TrainConfig
    from grit.train.trainer import train

    final = train(TrainConfig.from_file(args.config, args.overrides))
    print(final)


def cmd_plot_loss(args: argparse.Namespace) -> None:
    from grit.train.plot import plot_loss

    print(plot_loss(args.run_dir, args.out))
