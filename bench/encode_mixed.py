"""Encode throughput on texts of mixed length: packed rows vs padded batches vs a plain padded forward, same run.

    python bench/encode_mixed.py                       # default model, float32, 384 STS-B sentences + 32 abstracts
    python bench/encode_mixed.py --dtype bfloat16 --repeats 5

Texts are real and of very different lengths, in a seeded shuffle: STS-B test sentences (~10-30 tokens) and
Cranfield abstracts (~100-400 tokens, cut at --max-length 256) from ../shared/data. Three ways to embed them,
batch 32 each, alternated over ``--repeats`` rounds to spread machine noise evenly:
  - plain: what a user writes by hand, batches in input order, each right-padded to its longest text
    (tokenizer(padding=True) → the decoder body → masked mean), with grit's bidirectional mask;
  - padded: ``GritModel.encode(packed=False)``: texts sorted by length, right-padded batches;
  - packed: ``GritModel.encode()`` (the default): sorted, several texts per row, no padding computed;
  - packed_f16w: the same with the linear weights stored in float16 (``weights="float16"``, grit.fp16_weights; what
    "auto" picks for float32 on a CPU), where they can run (float32). The other three run plain weights.
Prints texts/s and the ratios; writes bench/results/encode_mixed.json with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from grit import GritModel
from grit.attention import bidirectional_mask, positions
from grit.fp16_weights import unavailable
from grit.hardware import describe_machine

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results"


def mixed_texts(sentences: int, abstracts: int, seed: int = 0) -> list[str]:
    sts, cranfield = SHARED / "sts" / "stsb-test.jsonl", SHARED / "retrieval" / "cranfield" / "corpus.jsonl"
    for path in (sts, cranfield):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: the benchmark reads real text from ../shared/data")
    short = [json.loads(line)["sentence1"] for line in sts.open()][:sentences]
    long = [t for t in (json.loads(line)["text"] for line in cranfield.open()) if t.strip()][:abstracts]
    texts = short + long
    random.Random(seed).shuffle(texts)
    return texts


@torch.inference_mode()
def plain(model: GritModel, texts: list[str], batch_size: int, max_length: int) -> np.ndarray:
    tok, base = model.tokenizer, model.lm.base_model
    prefix = model.format.embed_prefix("")
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok([prefix + t for t in texts[i : i + batch_size]], padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt")  # fmt: skip
        mask = enc["attention_mask"]
        states = base(input_ids=enc["input_ids"], attention_mask=bidirectional_mask(mask, base.dtype),
                      position_ids=positions(mask)).last_hidden_state  # fmt: skip
        pooled = (states.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--sentences", type=int, default=384)
    p.add_argument("--abstracts", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="default: bench/results/encode_mixed_<dtype>.json")
    args = p.parse_args()
    model = GritModel.load(args.model, dtype=args.dtype, device="cpu", weights="plain")
    texts = mixed_texts(args.sentences, args.abstracts)
    lengths = [len(x.ids) for x in model.embedding_inputs(texts, "", max_length=args.max_length)]
    tokens = sum(lengths)
    runs = {
        "plain": lambda: plain(model, texts, args.batch_size, args.max_length),
        "padded": lambda: model.encode(texts, batch_size=args.batch_size, max_length=args.max_length, packed=False),
        "packed": lambda: model.encode(texts, batch_size=args.batch_size, max_length=args.max_length),
    }
    if args.dtype == "float32" and unavailable() is None:
        f16w = GritModel.load(args.model, dtype=args.dtype, device="cpu", weights="float16")
        runs["packed_f16w"] = lambda: f16w.encode(texts, batch_size=args.batch_size, max_length=args.max_length)
    model.encode(texts[:64], batch_size=args.batch_size)  # warm-up (first-call allocations)
    vectors: dict[str, np.ndarray] = {}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            vectors[name] = run()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": describe_machine(),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "texts": len(texts),
        "tokens": tokens,
        "token_lengths": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        "seconds": seconds,
        "texts_per_s": {name: len(texts) / s for name, s in median.items()},
        "packed_vs_plain": median["plain"] / median["packed"],
        "packed_vs_padded": median["padded"] / median["packed"],
        "padded_vs_plain": median["plain"] / median["padded"],
        "max_abs_diff_packed_vs_padded": float(np.abs(vectors["packed"] - vectors["padded"]).max()),
        "max_abs_diff_plain_vs_padded": float(np.abs(vectors["plain"] - vectors["padded"]).max()),
    }
    if "packed_f16w" in runs:
        result["f16w_vs_packed"] = median["packed"] / median["packed_f16w"]
        result["min_cosine_f16w_vs_packed"] = float((vectors["packed"] * vectors["packed_f16w"]).sum(1).min())
    out = args.out or OUT / f"encode_mixed_{args.dtype}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(texts)} texts, {tokens} tokens (lengths {result['token_lengths']}), {args.dtype}, "
          f"{result['threads']} threads, {result['machine']}")  # fmt: skip
    for name in runs:
        print(f"  {name:7s} {result['texts_per_s'][name]:8.1f} texts/s  (median of {args.repeats})")
    print(f"  packed / plain {result['packed_vs_plain']:.2f}x, packed / padded {result['packed_vs_padded']:.2f}x, "
          f"padded / plain {result['padded_vs_plain']:.2f}x")  # fmt: skip
    if "f16w_vs_packed" in result:
        print(f"  float16 weights / plain weights (packed) {result['f16w_vs_packed']:.2f}x, min cosine "
              f"{result['min_cosine_f16w_vs_packed']:.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
