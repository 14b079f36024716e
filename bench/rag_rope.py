"""How close a joined multi-document KV cache is to a fresh computation, with and without the RoPE re-rotation.

    python bench/rag_rope.py                      # default model, top-k = 2, 3, 5 Cranfield abstracts

Each document is cached on its own (causal attention, positions from 0), the caches are joined, and a question
runs on top. The yardstick is a fresh forward over the same tokens in which each document sees only itself and the
question sees everything (``grit.kvcache.reference_logits``): what the joined cache must equal. GritLM joins caches
as they are (every document at positions 0..n-1); grit re-rotates each document's keys to where it sits.
Reports the max absolute logit difference over the question tokens, and whether the greedy next token agrees.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grit import GritModel
from grit.kvcache import compute_cache, logits_on_cache, reference_logits

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "retrieval" / "cranfield"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--k", type=int, nargs="+", default=[2, 3, 5])
    args = parser.parse_args()
    model = GritModel.load(args.model, dtype=args.dtype)
    tok, lm = model.tokenizer, model.lm
    corpus = [json.loads(line) for line in (SHARED / "corpus.jsonl").open()]
    question = json.loads((SHARED / "queries.jsonl").open().readline())["text"]
    suffix = tok(f"\n<|user|>\n{question}\n<|assistant|>\nThe answer is", add_special_tokens=False)["input_ids"]
    print(f"model {model.path.name}, {str(model.dtype).removeprefix('torch.')}; question of {len(suffix)} tokens")
    head = f"{'k':>3} {'cached tokens':>14} {'max |Δlogit| RoPE-shifted':>27} {'GritLM concat':>14}"
    print(f"{head} {'argmax agree':>13}")
    for k in args.k:
        docs = [tok(model.format.embed_prefix("") + d["text"])["input_ids"] for d in corpus[:k]]
        spans = [compute_cache(lm.base_model, d, "causal") for d in docs]
        fresh = reference_logits(lm, docs, suffix)
        fixed = logits_on_cache(lm, spans, suffix, reposition=True)
        plain = logits_on_cache(lm, spans, suffix, reposition=False)
        agree = [(x.argmax(-1) == fresh.argmax(-1)).float().mean().item() for x in (fixed, plain)]
        print(f"{k:>3} {sum(map(len, docs)):>14} {(fixed - fresh).abs().max().item():>27.2e} "
              f"{(plain - fresh).abs().max().item():>14.2e} {agree[0]:>6.0%}/{agree[1]:>5.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
