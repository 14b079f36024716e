"""The GPU path of the GRIT recipe: train configs/grit-smollm2-gpu.yaml, stage its adapter, score it on the compare
suite, in one command, with the wall time of each stage (the recipe issue's budget: under 8 minutes on one
H200-class GPU, evaluation included).

    python tools/train_gpu.py                                  # on a GPU machine
    python tools/train_gpu.py --max-steps 2 --device cpu --eval-tasks stsb --out runs/gpu-try   # a try on the CPU

Writes into ``--out`` (default runs/gpu): ``train/`` (the run: checkpoints, log.jsonl, adapter), ``staged/`` (the
adapter as grit ships it: tools/ship_adapter.py), ``eval/`` (results.json and results.md of ``grit eval``) and
``summary.json`` (machine, stage times, the main scores). Each stage runs as its own process, as a user would
type it; the same command continues a cut-off run from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


def stage(name: str, command: list[str], times: dict[str, float]) -> None:
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    times[name] = round(time.perf_counter() - start, 1)
    print(f"== {name} took {times[name]:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/grit-smollm2-gpu.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu"))
    parser.add_argument("--max-steps", type=int, help="override the config's max_steps (a short try)")
    parser.add_argument("--device", help="override the config's device (cpu to try the script without a GPU)")
    parser.add_argument("--eval-tasks", help="comma-separated compare-suite tasks (default: the whole suite)")
    parser.add_argument("overrides", nargs="*", help="more config options as key=value")
    args = parser.parse_args()

    from ship_adapter import ship

    out = args.out.resolve()
    overrides = [f"output_dir={out / 'train'}", *args.overrides]
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    if args.device:
        overrides.append(f"device={args.device}")
        if args.device == "cpu":
            overrides.append("dtype=auto")  # bf16 on a CPU without native bf16 would be hundreds of times slower
    times: dict[str, float] = {}
    grit = [sys.executable, "-m", "grit.cli"]
    stage("train", [*grit, "train", args.config, *overrides], times)
    start = time.perf_counter()
    ship(out / "train", out / "staged")
    times["stage"] = round(time.perf_counter() - start, 1)
    evaluate = [*grit, "eval", str(out / "staged"), "--suite", "compare", "--out", str(out / "eval"), "--resume"]
    if args.eval_tasks:
        evaluate += ["--tasks", args.eval_tasks]
    if args.device:
        evaluate += ["--device", args.device]
    stage("eval", evaluate, times)

    from grit.hardware import describe_machine

    results = json.loads((out / "eval" / "results.json").read_text())
    summary = {
        "machine": describe_machine(),
        "config": args.config,
        "overrides": overrides,
        "seconds": times | {"total": round(sum(times.values()), 1)},
        "rows": results["rows"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["seconds"]))


if __name__ == "__main__":
    main()
