"""Is one model's STS Spearman really above another's? A paired bootstrap over the same pairs.

Both models embed every pair of the STS file (the compare suite's instruction and rows); the pairs are resampled with
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
import platform
from pathlib import Path

import numpy as np
from scipy import stats

from grit import instructions
from grit.embedding import normalize_rows
from grit.eval import data
from grit.eval.metrics import spearman
from grit.eval.tasks import encode
from grit.model import GritModel

log = logging.getLogger("sts_paired_bootstrap")

DEFAULT_STS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sts" / "stsb-test.jsonl"


def pair_cosines(model_path: str, sentence_pairs: list[data.StsPair], dtype: str, threads: int) -> np.ndarray:
    """(n,) cosine of each pair under the model at ``model_path``, as the compare suite's STS task computes it."""
    model = GritModel.load(model_path, dtype=dtype, threads=threads)
    instruction = instructions.GRITLM_E5["STSBenchmark"]
    a = normalize_rows(encode(model, [p.sentence1 for p in sentence_pairs], instruction))
    b = normalize_rows(encode(model, [p.sentence2 for p in sentence_pairs], instruction))
    return np.sum(a * b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_a", help="the reference model (a folder, an adapter folder or a .gguf)")
    parser.add_argument("model_b", help="the model compared with it")
    parser.add_argument("--sts", type=Path, default=DEFAULT_STS, help="STS JSONL file (default: STS-B test)")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--dtype", default="float32", help="the compare suite runs float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.resamples < 100:
        parser.error("--resamples must be at least 100 for a 95% interval")

    sentence_pairs = data.read_sts(args.sts)
    gold = np.array([p.score for p in sentence_pairs], dtype=np.float64)
    cos_a = pair_cosines(args.model_a, sentence_pairs, args.dtype, args.threads)
    cos_b = pair_cosines(args.model_b, sentence_pairs, args.dtype, args.threads)

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
        "sts_file": str(args.sts),
        "pairs": len(sentence_pairs),
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
        "host": platform.processor() or platform.machine(),
    }
    low, high = report["ci95"]
    print(
        f"{len(sentence_pairs)} pairs: Spearman A {report['spearman_a']:.4f}, B {report['spearman_b']:.4f}; "
        f"B - A = {report['difference_b_minus_a']:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}]; "
        f"B better in {share_b_better:.1%} of resamples"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
