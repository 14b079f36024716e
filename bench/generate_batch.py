"""Batched greedy generation (``GritModel.generate_batch``) against one prompt at a time, on the default model, with
grit's own decoding loop and with transformers' ``generate``.

    python bench/generate_batch.py                      # 24 Self-Instruct prompts, 64 new tokens, batches of 4 and 8
    python bench/generate_batch.py --prompts 48 --max-new-tokens 128 --batch-sizes 2,4,8,16

The prompts are the first user turns of the held-out Self-Instruct rows (data/instructions/, what ``grit eval``
answers), so lengths vary as they do in the eval. Two decoders, one after the other in this process:
``grit`` (no gate: ``grit.decoding.decode_together``, what ``generate`` and ``generate_batch`` run) and
``transformers`` (the same calls under a plain gate, which takes transformers' ``generate``, left-padded batches).
Prints prompts/s for each way, the ratio to transformers one at a time measured in the same run, and whether every
answer equals that reference (it must: greedy).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

from grit import GritModel
from grit.eval.data import read_generative
from grit.generation import SamplingParams, complete, complete_batch

DATA = Path(__file__).resolve().parents[1] / "data" / "instructions" / "self_instruct_human.jsonl"


class PlainGate:
    """A gate that shares nothing: under it ``grit.generation`` decodes with transformers' ``generate``."""

    def hold(self):
        return nullcontext()

    def run(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def between_tokens(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model path (default: grit's default model)")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="4,8")
    parser.add_argument("--decoders", default="transformers,grit", help="comma-separated: transformers, grit")
    args = parser.parse_args()

    model = GritModel.load(args.model)
    rows = read_generative(DATA, heldout_only=True)[: args.prompts]
    ids = [model.prompt_ids(r.messages(upto=len(r.turns) - 1), args.max_new_tokens) for r in rows]
    params = SamplingParams(args.max_new_tokens)
    print(f"{model.path.name}: {len(ids)} prompts, max_new_tokens={args.max_new_tokens}, {model.placement}")

    reference, base = None, None
    for decoder in args.decoders.split(","):
        gate = {"transformers": PlainGate(), "grit": None}[decoder]
        ways = [("one at a time", 0)] + [(f"batch {s}", int(s)) for s in args.batch_sizes.split(",")]
        for name, size in ways:
            start = time.perf_counter()
            if size:
                texts = [g.text for g in complete_batch(model.lm, model.tokenizer, ids, params, size, gate=gate)]
            else:
                texts = [complete(model.lm, model.tokenizer, i, params, gate=gate).text for i in ids]
            seconds = time.perf_counter() - start
            reference, base = reference or texts, base or seconds
            same = sum(a == b for a, b in zip(texts, reference, strict=True))
            print(f"{decoder:>12} {name:>14}: {len(ids) / seconds:6.2f} prompts/s   {base / seconds:4.2f}x   "
                  f"answers equal to the first way's: {same}/{len(ids)}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
