"""Encode throughput: grit vs a plain transformers forward pass, same model, dtype, batch and tokens, same run.

    python bench/encode.py                     # default model, 256 texts x 128 tokens, batch 32, dtype auto
    python bench/encode.py --dtype bfloat16 --texts 64

Texts are Cranfield abstracts from ../shared/data (real text), cut to exactly 128 tokens in the embedding format.
The peer is what a user would write by hand: tokenizer(padding=True) → model.model(...) → masked mean pooling →
normalize, with the model's default (causal) attention. Runs alternate grit / peer to spread machine noise evenly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from grit import GritModel

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_texts(model: GritModel, n: int, tokens: int) -> list[str]:
    """n real texts of exactly ``tokens`` tokens once formatted for embedding (prefix included)."""
    corpus = SHARED / "retrieval" / "cranfield" / "corpus.jsonl"
    if not corpus.is_file():
        raise SystemExit(f"{corpus} is missing: the benchmark reads real text from ../shared/data")
    prefix = model.format.embed_prefix("")
    docs = [json.loads(line)["text"] for line in corpus.open()]
    tok = model.tokenizer
    texts = []
    for doc in docs:
        ids = tok(prefix + doc, add_special_tokens=True)["input_ids"]
        if len(ids) >= tokens:
            texts.append(tok.decode(ids[:tokens], skip_special_tokens=True).removeprefix(prefix))
        if len(texts) == n:
            return texts
    raise SystemExit(f"only {len(texts)} documents have {tokens} tokens")


@torch.inference_mode()
def plain_encode(model: GritModel, texts: list[str], batch_size: int, max_length: int) -> torch.Tensor:
    lm, tok = model.lm, model.tokenizer
    prefix = model.format.embed_prefix("")
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(
            [prefix + t for t in texts[i : i + batch_size]],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        hidden = lm.model(**enc).last_hidden_state  # (B, T, H)
        mask = enc["attention_mask"][..., None].to(hidden.dtype)
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).float())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = GritModel.load(args.model, dtype=args.dtype)
    texts = load_texts(model, args.texts, args.tokens)
    n_tokens = sum(len(model.tokenizer(model.format.embed_prefix("") + t)["input_ids"]) for t in texts)

    def run_grit():
        model.encode(texts, batch_size=args.batch_size, max_length=args.tokens, show_progress=False)

    def run_plain():
        plain_encode(model, texts, args.batch_size, args.tokens)

    run_grit(), run_plain()  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"grit": [], "plain transformers": []}
    for _ in range(args.repeats):
        for name, fn in (("grit", run_grit), ("plain transformers", run_plain)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rate = {name: n_tokens / statistics.median(t) for name, t in times.items()}
    print(
        f"model {model.path.name}, dtype {str(model.dtype).removeprefix('torch.')}, threads "
        f"{torch.get_num_threads()}, {len(texts)} texts x {args.tokens} tokens ({n_tokens} tokens), "
        f"batch {args.batch_size}, median of {args.repeats}"
    )
    for name, r in rate.items():
        print(f"  {name:<20} {r:8.0f} tokens/s")
    print(f"  ratio grit / plain   {rate['grit'] / rate['plain transformers']:8.2f}")


if __name__ == "__main__":
    main()
