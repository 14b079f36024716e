"""Batched greedy generation (``GritModel.generate_batch``) against one prompt at a time, on the default model.

    python bench/generate_batch.py                      # 24 Self-Instruct prompts, 64 new tokens, batches of 4 and 8
    python bench/generate_batch.py --prompts 48 --max-new-tokens 128 --batch-sizes 2,4,8,16

The prompts are the first user turns of the held-out Self-Instruct rows (data/instructions/, what ``grit eval``
answers), so lengths vary as they do in the eval. Prints prompts/s for each way, the ratio to one at a time
measured in the same run, and whether every batched answer equals the unbatched one (it must: greedy).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from grit import GritModel
from grit.eval.data import read_generative

DATA = Path(__file__).resolve().parents[1] / "data" / "instructions" / "self_instruct_human.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model path (default: grit's default model)")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="4,8")
    args = parser.parse_args()

    model = GritModel.load(args.model)
    rows = read_generative(DATA, heldout_only=True)[: args.prompts]
    prompts = [r.messages(upto=len(r.turns) - 1) for r in rows]
    print(f"{model.path.name}: {len(prompts)} prompts, max_new_tokens={args.max_new_tokens}, {model.device}")

    start = time.perf_counter()
    reference = [model.generate(p, max_new_tokens=args.max_new_tokens) for p in prompts]
    single = time.perf_counter() - start
    print(f"{'one at a time':>14}: {len(prompts) / single:6.2f} prompts/s   1.00x")
    for size in (int(s) for s in args.batch_sizes.split(",")):
        start = time.perf_counter()
        texts = model.generate_batch(prompts, max_new_tokens=args.max_new_tokens, batch_size=size)
        seconds = time.perf_counter() - start
        same = sum(a == b for a, b in zip(texts, reference, strict=True))
        print(
            f"{f'batch {size}':>14}: {len(prompts) / seconds:6.2f} prompts/s   {single / seconds:4.2f}x   "
            f"answers equal to one at a time: {same}/{len(prompts)}"
        )


if __name__ == "__main__":
    main()
