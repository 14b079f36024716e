"""Is one model's STS Spearman really above another's? A paired bootstrap over the same pairs.

Both models embed every pair of an STS task of the compare suite (its file, instruction and rows: the suite's own
``STSTask``, STS-B by default); the pairs are resampled with
replacement 10,000 times and each model's Spearman recomputed on each resample (scipy's ``bootstrap``, paired, BCa),
which gives a confidence interval for the difference. A difference whose interval holds zero is not one this test
set can tell apart from sampling noise.

    python tools/sts_paired_bootstrap.py runs/models/v2 runs/staged/cache150 --out results/runs/stsb-bootstrap.json

Writes the JSON (both Spearmans, the difference, its 95% interval, the share of resamples where B beats A) and
prints one line.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from scipy import stats

from grit.eval.embedding_tasks import STSTask
from grit.eval.metrics import spearman
from grit.eval.run import all_tasks, default_data_dir
from grit.hardware import describe_machine
from grit.model import GritModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_a", help="the reference model (a folder, an adapter folder or a .gguf)")
    parser.add_argument("model_b", help="the model compared with it")
    parser.add_argument("--task", default="stsb", help="the compare suite's STS task (default: stsb)")
    parser.add_argument("--data", type=Path, default=None, help="the shared data folder (default: grit eval's)")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--dtype", default="float32", help="the compare suite runs float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.resamples < 100:
        parser.error("--resamples must be at least 100 for a 95% interval")

    sts_tasks = {t.name: t for t in all_tasks(args.data or default_data_dir()) if isinstance(t, STSTask)}
    if args.task not in sts_tasks:
        parser.error(f"unknown STS task {args.task!r}; the suite's are {', '.join(sorted(sts_tasks))}")
    task = sts_tasks[args.task]
    if not task.path.is_file():
        parser.error(f"{task.path} does not exist (pass --data, the shared data folder)")
    cos_a, gold = task.pair_cosines(GritModel.load(args.model_a, dtype=args.dtype, threads=args.threads))
    cos_b, _ = task.pair_cosines(GritModel.load(args.model_b, dtype=args.dtype, threads=args.threads))

    def difference(ca: np.ndarray, cb: np.ndarray, g: np.ndarray) -> float:
        return spearman(cb, g) - spearman(ca, g)

    result = stats.bootstrap(
        (cos_a, cos_b, gold),
        difference,
        paired=True,
        vectorized=False,
        n_resamples=args.resamples,
        confidence_level=0.95,
        method="BCa",
        rng=np.random.default_rng(args.seed),
    )
    share_b_better = float(np.mean(np.asarray(result.bootstrap_distribution) > 0))
    report = {
        "task": task.name,
        "sts_file": task.path.name,
        "pairs": len(gold),
        "model_a": args.model_a,
        "model_b": args.model_b,
        "spearman_a": spearman(cos_a, gold),
        "spearman_b": spearman(cos_b, gold),
        "difference_b_minus_a": difference(cos_a, cos_b, gold),
        "ci95": [float(result.confidence_interval.low), float(result.confidence_interval.high)],
        "share_of_resamples_b_better": share_b_better,
        "resamples": args.resamples,
        "method": "scipy.stats.bootstrap, paired, BCa",
        "dtype": args.dtype,
        "threads": args.threads,
        "machine": describe_machine(),
    }
    low, high = report["ci95"]
    print(
        f"{len(gold)} pairs: Spearman A {report['spearman_a']:.4f}, B {report['spearman_b']:.4f}; "
        f"B - A = {report['difference_b_minus_a']:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}]; "
        f"B better in {share_b_better:.1%} of resamples"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
