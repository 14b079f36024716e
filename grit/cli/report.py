"""`grit report RUN...`: several `grit eval` runs (and `grit train` logs) side by side in one table."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def report_command(args: Any) -> int:
    from grit.eval.report import (
        add_means,
        check_tasks,
        columns,
        loss_windows_table,
        markdown,
        parse_pairs,
        parse_windows,
        read_train_log,
        training_summary,
    )

    runs = parse_pairs(args.runs, "run")
    windows = parse_windows(args.loss_windows) if args.loss_windows else None  # a bad range fails before any reading
    logs = {label: read_train_log(path) for label, path in parse_pairs(args.train or [], "--train")}
    if windows and not logs:
        raise ValueError("--loss-windows needs --train: the runs whose logs to read")
    averages = [check_tasks(spec.split(",")) for spec in args.average or []]
    cols = add_means(columns(runs), parse_pairs(args.mean or [], "--mean"))
    text = markdown(cols, {label: training_summary(records) for label, records in logs.items()}, averages)
    if windows:
        text += "\n" + loss_windows_table(logs, windows)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


def add_report_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="compare several grit eval runs in one table (embedding and generative averages)",
        description="One table from several `grit eval` result folders: a column per model, a row per task.",
    )
    p.add_argument(
        "runs",
        nargs="+",
        help="LABEL=FOLDER of a grit eval run (its results.json); FOLDER+FOLDER joins runs of one model",
    )
    p.add_argument("--train", nargs="*", help="LABEL=FOLDER of a grit train run: steps, tokens and time")
    p.add_argument(
        "--average",
        action="append",
        metavar="TASKS",
        help="also show the average of these comma-separated tasks (repeatable), e.g. those every column scored",
    )
    p.add_argument(
        "--mean",
        action="append",
        metavar="LABEL=A,B",
        help="also show a column LABEL that averages the columns A, B, ... (e.g. seeds of one setting; repeatable)",
    )
    p.add_argument(
        "--loss-windows",
        metavar="STEPS",
        help="also tabulate each --train run's mean losses over these step ranges, e.g. 1-25,26-50,51-100",
    )
    p.add_argument("--out", help="also write the table to this Markdown file")
    p.set_defaults(handler=report_command)
