"""``grit eval`` wiring: argparse, then a real run of one task on the tiny model."""

from __future__ import annotations

import argparse
import json

import pytest

from grit.cli.eval import add_eval_command, default_out_dir


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="grit")
    add_eval_command(root.add_subparsers(dest="command", required=True))
    return root


def test_arguments():
    args = parser().parse_args(["eval", "default", "--suite", "full", "--limit", "5", "--baselines"])
    assert (args.model, args.suite, args.limit, args.baselines, args.out) == ("default", "full", 5, True, None)
    with pytest.raises(SystemExit):
        parser().parse_args(["eval", "m", "--limit", "0"])
    args = parser().parse_args(["eval", "m", "--suite", "nope"])  # checked by build_suite, before the model loads
    with pytest.raises(ValueError, match="unknown suite 'nope'; choose one of quick, compare, standard, full"):
        args.handler(args)
    assert default_out_dir("/models/SmolLM2.Q4_1.gguf", "quick").name.endswith("-SmolLM2.Q4_1-quick")


def test_eval_command_runs_and_writes(tiny_model_path, eval_data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", str(tiny_model_path), "--data", str(eval_data), "--limit", "3", "--tasks", "stsb",
            "--out", str(out), "--device", "cpu", "--dtype", "float32"]  # fmt: skip
    args = parser().parse_args(argv)
    assert args.handler(args) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(r["task"], r["metric"], r["n"]) for r in rows] == [("stsb", "spearman", 3), ("stsb", "pearson", 3)]
    ran = results["placements"][tiny_model_path.name]  # what ran, resolved: never "auto"
    assert (ran["device"], ran["dtype"]) == ("cpu", "float32") and ran["threads"] >= 1
    assert "| stsb | spearman |" in capsys.readouterr().out


def test_eval_command_rejects_unknown_task_before_loading(eval_data):
    args = parser().parse_args(["eval", "no/such/model", "--data", str(eval_data), "--tasks", "stsb,nope"])
    with pytest.raises(ValueError, match="unknown task\\(s\\) nope; suite quick has stsb, cranfield"):
        args.handler(args)
