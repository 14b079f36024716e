"""Stop strings: grit's matcher (``StopOnText``, decodes each row's last few tokens) against transformers' own
``stop_strings`` (a vocabulary-by-length table per set of strings), same model, prompt and strings, same run.

    python bench/stop_strings.py                 # default model, 16 greedy tokens, 4 strings of 8, 64 and 1000 chars

Each case runs in a fresh process so its memory growth is its own; the strings never occur, so every run makes all
16 tokens. Prints seconds per generation and the growth of the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(matcher: str, length: int, tokens: int) -> dict:
    import torch

    from grit import GritModel, generation
    from grit.generation import SamplingParams

    model = GritModel.load(dtype="float32", device="cpu")
    ids = model.prompt_ids("Write a short story about a lighthouse keeper.", tokens)
    stops = [chr(0x2460 + i) * length for i in range(4)]  # circled digits: never generated
    params = SamplingParams(tokens, stop=stops, min_new_tokens=tokens)
    generation.run_generate(model.lm, model.tokenizer, ids, SamplingParams(2))  # warm-up, no stops
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if matcher == "grit":
        out = generation.run_generate(model.lm, model.tokenizer, ids, params)
    else:  # transformers' StopStringCriteria, as grit used until it replaced it
        config = generation.generation_config(model.lm, params, model.tokenizer)
        config.stop_strings = stops
        with torch.inference_mode():
            out = model.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                    tokenizer=model.tokenizer)  # fmt: skip
    seconds = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"matcher": matcher, "chars": length, "seconds": seconds, "rss_mib": grown,
            "tokens": out.shape[1] - ids.shape[1]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--lengths", default="8,64,1000")
    parser.add_argument("--one", nargs=2, metavar=("MATCHER", "CHARS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.tokens)))
        return
    import torch

    print(f"default model, float32, {torch.get_num_threads()} threads, {args.tokens} tokens, 4 stop strings")
    print(f"{'matcher':<14} {'chars':>5} {'seconds':>8} {'peak RSS +MiB':>14}")
    for length in map(int, args.lengths.split(",")):
        for matcher in ("grit", "transformers"):
            cmd = [sys.executable, __file__, "--tokens", str(args.tokens), "--one", matcher, str(length)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            assert r["tokens"] == args.tokens, r
            print(f"{matcher:<14} {length:>5} {r['seconds']:>8.2f} {r['rss_mib']:>14.0f}")


if __name__ == "__main__":
    main()
