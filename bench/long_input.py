"""Seconds to embed one long text, by its length: how long one embedding request holds the model (a bidirectional
forward pass cannot be split), the figure behind ``grit serve --max-input-tokens``'s default.

    python bench/long_input.py                         # default model, float32, 512 ... 8,000 tokens of STS-B text
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from grit import GritModel

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--lengths", default="512,1024,2048,4096,8000")
    args = parser.parse_args()
    path = SHARED / "sts" / "stsb-test.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the benchmark embeds real text from ../shared/data")
    model = GritModel.load(args.model, dtype=args.dtype)
    text = " ".join(json.loads(line)["sentence1"] for line in path.open())
    ids = model.token_ids(text)
    model.encode(model.decode(ids[:512]), max_length=model.context_length)  # warm-up at a real length
    print(f"model {model.path.name}, {args.dtype}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print("| tokens | seconds |\n|---|---|")
    for n in map(int, args.lengths.split(",")):
        chunk = model.decode(ids[:n])
        start = time.perf_counter()
        model.encode(chunk, max_length=model.context_length)
        print(f"| {n} | {time.perf_counter() - start:.2f} |")


if __name__ == "__main__":
    main()
