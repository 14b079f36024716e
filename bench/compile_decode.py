"""Prototype measurement (issue 23): does ``torch.compile`` of the decoding step make single-stream CPU decoding
faster? Not yet wired into grit: this is what the decision rests on.

    python bench/compile_decode.py [DTYPE] [THREADS]     # default bfloat16, 1 thread

One greedy generation of 64 tokens of the default model (SmolLM2-135M-Instruct with the GRIT adapter) from a
transformers ``StaticCache`` (fixed shapes, so one compiled graph serves every step): eager steps, then the same
steps through ``torch.compile(dynamic=False)`` (inductor's C++ kernels), the first compiled run including the
compile. Prints the median step time of each and whether the greedy tokens are identical.
"""

from __future__ import annotations

import sys
import time

import torch
from transformers import StaticCache

from grit import GritModel

NEW_TOKENS = 64


def main() -> None:
    dtype = sys.argv[1] if len(sys.argv) > 1 else "bfloat16"
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    model = GritModel.load(None, dtype=dtype, device="cpu", weights="plain")  # the eager step it was measured on
    lm = model.lm
    ids = model.prompt_ids([{"role": "user", "content": "What is the capital of France and why?"}], NEW_TOKENS)
    width = ids.shape[1]

    def step(token, position, cache):
        return lm(input_ids=token, cache_position=position, position_ids=position[None], past_key_values=cache,
                  use_cache=True).logits  # fmt: skip

    def run(step_fn, label: str) -> list[int]:
        cache = StaticCache(config=lm.config, max_cache_len=width + NEW_TOKENS + 8)
        with torch.inference_mode():
            out = lm(input_ids=ids, cache_position=torch.arange(width), past_key_values=cache, use_cache=True,
                     logits_to_keep=1)  # fmt: skip
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens, times = [int(token)], []
            for i in range(NEW_TOKENS):
                began = time.perf_counter()
                token = step_fn(token, torch.tensor([width + i]), cache)[:, -1].argmax(-1, keepdim=True)
                times.append(time.perf_counter() - began)
                tokens.append(int(token))
        steady = sorted(times[4:])  # the first steps warm caches and allocators
        median = steady[len(steady) // 2]
        print(f"{label}: median step {1000 * median:.1f} ms, {1 / median:.1f} tokens/s", flush=True)
        return tokens

    eager = run(step, "eager")
    compiled = torch.compile(step, dynamic=False)
    began = time.perf_counter()
    run(compiled, "compiled, first run (includes the compile)")
    print(f"compile and first run: {time.perf_counter() - began:.0f} s")
    again = run(compiled, "compiled")
    print("greedy tokens identical:", eager == again)


if __name__ == "__main__":
    main()
