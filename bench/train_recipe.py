"""Training throughput of a real recipe: the config's own data, batches and options, timed phase by phase.

    python bench/train_recipe.py configs/grit-smollm2-unified.yaml --steps 6
    python bench/train_recipe.py configs/grit-smollm2-v2.yaml --steps 6 dtype=bfloat16   # key=value: config options
    python bench/train_recipe.py configs/grit-smollm2-v2.yaml --synthetic   # and bench/train.py's fixed step, same run

``bench/train.py`` times one synthetic unified step (fixed lengths, no padding). A real run also pays for what its
data brings: padding in short texts, many small forward passes, tokenising, a second backward for each loss. This
benchmark builds the trainer's own parts (``Batches``, ``micro_step``, AdamW and the schedule) from a config and
times, per optimizer step:

    batches    reading and tokenising the next batches (``Batches.next``)
    embedding  the contrastive forward and backward passes (GradCache included)
    generative the next-token forward and backward passes
    update     one clip of the summed gradient, AdamW and the schedule (``clip_per_loss`` adds a norm per loss)

Tokens are real (non-pad) input tokens; ``computed`` counts every position the forward passes ran, padding
included, so ``real / computed`` is the padding efficiency. One warm-up step, then ``--steps`` timed ones (their
total, not a median: batches differ). ``--synthetic`` also runs bench/train.py's step in the same process tree, on
the same dtype, for the ratio the recipe issue sets (real >= 0.8x synthetic).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def run(config: str, overrides: list[str], steps: int) -> dict:
    from grit.hardware import describe_machine, resolve_placement
    from grit.packing import attention_width
    from grit.train.batches import Batches
    from grit.train.build import build_model, build_optimizer, build_scheduler
    from grit.train.config import TrainConfig
    from grit.train.distributed import Dist
    from grit.train.step import micro_step

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.from_file(config, [*overrides, f"output_dir={tmp}", f"max_steps={steps + 1}"])
    placement = resolve_placement(cfg.device, cfg.dtype, cfg.threads or None)
    placement.apply_threads()
    cfg = cfg.resolved(placement)
    d = Dist(device=placement.device)
    trainee = build_model(cfg, d)
    width_cost = attention_width(trainee.lm.config)
    batches = Batches(cfg, trainee.model.tokenizer, trainee.model.format, d, width_cost)
    optimizer = build_optimizer(trainee, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps + 1)
    params = [p for _, p in trainee.named_params()]
    phases = dict.fromkeys(("batches", "embedding", "generative", "update"), 0.0)
    counts = dict.fromkeys(("emb_tokens", "emb_computed", "gen_tokens", "gen_computed"), 0)

    def timed(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        phases[name] += time.perf_counter() - start
        return out

    def one_step() -> None:
        accum = cfg.gradient_accumulation
        pairs = [timed("batches", batches.next) for _ in range(accum)]
        for emb, gen in pairs:
            for name, part in (("embedding", (emb, None)), ("generative", (None, gen))):
                if part[0] is None and part[1] is None:
                    continue
                m = timed(name, micro_step, trainee.lm, *part, cfg, d, scale=1 / accum, dtype=trainee.compute_dtype)
                kind = name[:3]
                counts[f"{kind}_tokens"] += m.tokens
                counts[f"{kind}_computed"] += computed_positions(*part, cfg, width_cost)

        def update() -> None:
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

        timed("update", update)

    one_step()  # warm-up: allocator, kernels, optimizer state
    for key in phases:
        phases[key] = 0.0
    counts = dict.fromkeys(counts, 0)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    seconds = time.perf_counter() - start
    counts["tokens"] = counts["emb_tokens"] + counts["gen_tokens"]
    counts["computed"] = counts["emb_computed"] + counts["gen_computed"]
    if d.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "config": config,
        "overrides": overrides,
        "machine": describe_machine(),
        "dtype": cfg.dtype,
        "threads": cfg.threads,
        "lora": cfg.lora.enabled,
        "lora_dropout": cfg.lora.dropout,
        "steps": steps,
        "seconds_per_step": seconds / steps,
        "tokens_per_s": counts["tokens"] / seconds,
        "padding_efficiency": counts["tokens"] / max(counts["computed"], 1),
        "phases_s_per_step": {k: v / steps for k, v in phases.items()},
        **{k: v / steps for k, v in counts.items()},
        "peak_mib": peak,
    }


def computed_positions(emb, gen, cfg, width_cost: int) -> int:
    """Positions the forward passes compute: rows times width (embedding texts are packed in the forward pass, per
    GradCache chunk; generative batches arrive packed)."""
    from grit.packing import pack

    if emb is None:
        return int(gen.input_ids.numel())
    total = 0
    for padding in (emb.query_padding, emb.passage_padding):
        size = cfg.gradcache_chunk_size or len(padding)
        for start in range(0, len(padding), size):
            lengths = padding[start : start + size].sum(-1).tolist()
            if cfg.data.pack:
                width, rows = pack(lengths, width_cost)
                total += width * len(rows)
            else:
                total += max(lengths) * len(lengths)
    return total


def synthetic(dtype: str, steps: int, lora_dropout: float) -> dict:
    """bench/train.py's unified LoRA step (grit's loop), in a fresh process, on ``dtype``."""
    import subprocess

    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("train.py")), "--variants", "lora", "--loops", "grit",
         "--dtype", dtype, "--steps", str(steps), "--lora-dropout", str(lora_dropout), "--json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="config options as key=value")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps, after one warm-up step")
    parser.add_argument("--synthetic", action="store_true", help="also time bench/train.py's step (same dtype)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_intermixed_args()  # key=value overrides may come after the options
    result = run(args.config, args.overrides, args.steps)
    if args.synthetic:
        result["synthetic"] = synthetic(result["dtype"], max(args.steps // 2, 2), result["lora_dropout"])
        result["real_vs_synthetic"] = result["tokens_per_s"] / result["synthetic"]["tokens_per_s"]
    phases = ", ".join(f"{k} {v:.2f}" for k, v in result["phases_s_per_step"].items())
    print(f"{args.config} {' '.join(args.overrides)}: {result['machine']}, {result['dtype']}, "
          f"{result['threads']} threads, {'LoRA' if result['lora'] else 'full'}")  # fmt: skip
    print(
        f"  {result['tokens_per_s']:.0f} tokens/s, {result['seconds_per_step']:.2f} s/step ({phases}), "
        f"{result['tokens']:.0f} real of {result['computed']:.0f} computed tokens per step "
        f"(padding efficiency {result['padding_efficiency']:.2f}; embedding "
        f"{result['emb_tokens'] / max(result['emb_computed'], 1):.2f}, generative "
        f"{result['gen_tokens'] / max(result['gen_computed'], 1):.2f}), peak {result['peak_mib']:.0f} MiB"
    )
    if args.synthetic:
        s = result["synthetic"]
        print(f"  synthetic step (bench/train.py, LoRA dropout {result['lora_dropout']}, grit loop): "
              f"{s['tokens_per_s']:.0f} tokens/s; "
              f"real / synthetic = {result['real_vs_synthetic']:.2f}x")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if not math.isfinite(result["tokens_per_s"]):
        raise SystemExit("no tokens were trained")


if __name__ == "__main__":
    main()
