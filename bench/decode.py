"""Decoding speed: one stream, several decoded together (continuous batching) or in turn; quiet and beside a busy
process; float32 and bfloat16; with the OpenMP settings that decide how it survives contention.

    python bench/decode.py                       # default model; float32 and bfloat16 where native; quiet + busy
    python bench/decode.py --tokens 32 --dtypes float32 --no-busy   # a quick check
    python bench/decode.py --weights plain,float16 --dtypes float32  # float16-stored weights against plain ones
    python bench/decode.py --steps transformers,llama --no-busy     # the model's forward against grit's Llama step

Each configuration runs in a fresh process (OpenMP reads its environment once, at start), one after the other:
  - single: one greedy generation of ``--tokens`` tokens (fixed length) through ``grit.decoding.ContinuousDecoder``:
    time to first token (prefill) and decode tokens/s after it;
  - batched: ``--concurrent`` generations started together through the decoder: aggregate tokens/s;
  - in turn: the same generations on threads that share the model through ``FairGate`` (the server without
    continuous batching): aggregate tokens/s.
Settings: ``server`` loads the model on a ``ModelThread`` and runs every forward pass there, as ``grit serve`` does;
the others run them on the calling threads (the decoder's steps on one thread of their own).
"Busy" runs the same beside a second process that multiplies matrices on every core with torch's default threads
(another model, an index build: a server rarely has its cores to itself). Prompts are AdversarialQA questions from
../shared/data, in the chat format. Writes bench/results/decode.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results"
BUSY = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a = (a @ a).tanh()\n"


def questions(n: int) -> list[str]:
    path = SHARED / "rag" / "adversarialqa.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the benchmark reads real text from ../shared/data")
    with path.open() as f:
        return [json.loads(line)["question"] for line, _ in zip(f, range(n), strict=False)]


def measure(dtype: str, weights: str, tokens: int, concurrent: int, model_path: str | None,
            model_thread: bool, step: str = "auto", decode_threads: int = 0) -> dict:  # fmt: skip
    """In this process: the three measurements for one dtype. With ``model_thread``, as ``grit serve`` runs: the
    model is loaded on a ``ModelThread`` and every forward pass runs there (decoding steps too, on
    ``decode_threads``)."""
    import torch

    from grit import GritModel
    from grit.decoding import ContinuousDecoder
    from grit.generation import SamplingParams, complete
    from grit.serve.scheduler import FairGate, ModelThread

    worker = ModelThread() if model_thread else None
    load = partial(GritModel.load, model_path, dtype=dtype, device="cpu", weights=weights)
    model = worker.call(load) if worker else load()
    prompts = [model.prompt_ids([{"role": "user", "content": q}], tokens) for q in questions(concurrent)]
    params = SamplingParams(tokens, min_new_tokens=tokens)  # greedy, fixed length
    decoder = ContinuousDecoder(model.lm, model.tokenizer, FairGate(worker), max_batch=concurrent, step=step,
                                threads=decode_threads or None)  # fmt: skip
    first = []
    decoder.on_first_token = first.append
    decoder.generate(prompts[0], SamplingParams(4, min_new_tokens=4))  # warm-up
    first.clear()
    start = time.perf_counter()
    decoder.generate(prompts[0], params)
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    for f in [decoder.start(p, params) for p in prompts]:
        f.result()
    batched_s = time.perf_counter() - start
    decoder.close()
    gate = FairGate(worker)
    threads = [threading.Thread(target=complete, args=(model.lm, model.tokenizer, p, params), kwargs={"gate": gate})
               for p in prompts]  # fmt: skip
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    in_turn_s = time.perf_counter() - start
    return {
        "dtype": dtype,
        "weights": model.placement.weights,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "model_thread": model_thread,
        "decode_threads": decoder.threads or torch.get_num_threads(),
        "step": decoder.step_fn.__name__,
        "time_to_first_token_s": first[0],
        "single_tokens_per_s": (tokens - 1) / (single_s - first[0]),
        "batched_tokens_per_s": concurrent * tokens / batched_s,
        "in_turn_tokens_per_s": concurrent * tokens / in_turn_s,
    }


def run_child(config: dict, busy: bool, args) -> dict:
    env = {**os.environ, **config.get("env", {})}
    command = [sys.executable, __file__, "--child", config["dtype"], "--weights", config["weights"],
               "--steps", config["step"], "--decode-threads", str(args.decode_threads),
               "--tokens", str(args.tokens),
               "--concurrent", str(args.concurrent)] + (["--model", args.model] if args.model else [])  # fmt: skip
    command += ["--model-thread"] if config.get("model_thread") else []
    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return {**json.loads(out.strip().splitlines()[-1]), "busy": busy, "setting": config["name"]}


def main() -> None:
    from grit.hardware import cpu_has_fast_bf16, describe_machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--concurrent", type=int, default=8)
    p.add_argument("--dtypes", default=None, help="comma-separated (default: float32, and bfloat16 where native)")
    p.add_argument(
        "--weights",
        default="auto",
        help="comma-separated: auto, plain, float16 (grit.fp16_weights; float32 only: others run plain)",
    )
    p.add_argument("--steps", default="auto",
                   help="comma-separated decoding steps (grit.decode_step): auto, llama, transformers")  # fmt: skip
    p.add_argument("--decode-threads", type=int, default=0,
                   help="threads of a decoding step (0: grit.hardware.decode_threads, as grit serve)")  # fmt: skip
    p.add_argument("--busy", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", type=Path, default=OUT / "decode.json")
    p.add_argument("--settings", default="default,server,passive,one-thread",
                   help="default; server (a model thread, as grit serve runs); passive (OMP_WAIT_POLICY=PASSIVE); "
                        "one-thread (GRIT_THREADS=1)")  # fmt: skip
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-thread", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(
            json.dumps(
                measure(
                    args.child,
                    args.weights,
                    args.tokens,
                    args.concurrent,
                    args.model,
                    args.model_thread,
                    args.steps,
                    args.decode_threads,
                )
            )
        )
        return
    dtypes = args.dtypes.split(",") if args.dtypes else ["float32"] + (["bfloat16"] if cpu_has_fast_bf16() else [])
    settings = {"default": {}, "server": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
                "one-thread": {"GRIT_THREADS": "1"}}  # fmt: skip
    weights = args.weights.split(",")
    numerics = [(d, w) for d in dtypes for w in dict.fromkeys(weights if d == "float32" else ["plain"])]
    configs = [{"name": s, "dtype": d, "weights": w, "step": step, "env": settings[s], "model_thread": s == "server"}
               for s in args.settings.split(",") for d, w in numerics for step in args.steps.split(",")]  # fmt: skip
    rows = []
    for config in configs:
        for busy in [False, True] if args.busy else [False]:
            rows.append(run_child(config, busy, args))
            r = rows[-1]
            print(f"{r['setting']:8s} {r['dtype']:9s} {r['weights']:7s} {r['step']:17s} "
                  f"{'busy' if busy else 'quiet':5s} first token "
                  f"{r['time_to_first_token_s']:.2f} s, single {r['single_tokens_per_s']:.1f} tok/s, batched x"
                  f"{args.concurrent} {r['batched_tokens_per_s']:.1f}, in turn {r['in_turn_tokens_per_s']:.1f}",
                  flush=True)  # fmt: skip
    result = {"command": "python " + " ".join(sys.argv), "machine": describe_machine(), "tokens": args.tokens,
              "concurrent": args.concurrent, "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
