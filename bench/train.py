"""Training throughput: one unified GRIT step with grit's trainer vs a plain transformers + torch loop, same model,
dtype, batch and tokens, same run. Full fine-tuning and LoRA.

    python bench/train.py                  # default model: 8 queries x 32 tokens, 16 passages x 128, 8 chats x 128
    python bench/train.py --queries 2 --passage-tokens 64 --chats 2 --steps 2   # a quick check

One step = contrastive loss (queries vs positives + hard negatives, in-batch negatives) + next-token loss on the
assistant tokens, one backward each, gradient clipping, one AdamW step. Real text from ../shared/data: Cranfield
abstracts cut to exactly the query / passage length, GSM8K conversations longer than the chat length, cut to it.

grit: ``grit.train.trainer.optimizer_step`` as a training run calls it (``micro_step``: bidirectional attention
through ``lm.base_model``, mean over text tokens, ``contrastive_loss``, ``next_token_loss``).
plain: what a user writes by hand with transformers: ``lm.model(...)`` with its default (causal) mask, masked mean
over all tokens, InfoNCE written out, ``lm(..., labels=...).loss``, one backward of the sum, clip, AdamW. Both run
in the dtype "auto" resolves to, with the same precision policy (full: float32 weights, autocast to a lower dtype;
LoRA: base in that dtype, adapters float32).

Each variant runs in its own process, so peak memory (ru_maxrss on CPU, max_memory_allocated on GPU) is its own;
it takes one warm-up step, then ``--steps`` timed steps (median reported). The variants run one after another, so
other load on the machine skews the ratio: on a shared 2-core machine the same step varied 4x between runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import resource
import statistics
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def texts_of(tokenizer, prefix: str, n: int, tokens: int) -> list[str]:
    """n Cranfield abstracts of exactly ``tokens`` tokens once formatted for embedding (prefix included)."""
    corpus = SHARED / "retrieval" / "cranfield" / "corpus.jsonl"
    if not corpus.is_file():
        raise SystemExit(f"{corpus} is missing: the benchmark reads real text from ../shared/data")
    out = []
    for line in corpus.open():
        ids = tokenizer(prefix + json.loads(line)["text"], add_special_tokens=True)["input_ids"]
        if len(ids) >= tokens:
            out.append(tokenizer.decode(ids[:tokens], skip_special_tokens=True).removeprefix(prefix))
            if len(out) == n:
                return out
    raise SystemExit(f"only {len(out)} Cranfield abstracts have {tokens} tokens")


def make_batch(args: argparse.Namespace):
    """The fixed batch both loops train on: (EmbeddingBatch, GenerativeBatch) on the CPU."""
    from grit import GritModel
    from grit.train.collate import collate_embedding, collate_generative, tokenize_conversation
    from grit.train.data import EmbeddingGroup, GenerativeExample, parse_generative

    model = GritModel.load(args.model, device="cpu", weights="plain")  # only its tokenizer and format are read
    tok, fmt = model.tokenizer, model.format
    prefix = fmt.embed_prefix("")
    queries = texts_of(tok, prefix, args.queries, args.query_tokens)
    passages = texts_of(tok, prefix, 2 * args.queries, args.passage_tokens)
    groups = [EmbeddingGroup(("", q), [("", p) for p in passages[2 * i : 2 * i + 2]]) for i, q in enumerate(queries)]
    emb = collate_embedding(tok, groups, fmt, args.query_tokens, args.passage_tokens)
    chats: list[GenerativeExample] = []
    for line in (SHARED / "generative" / "gsm8k_train.jsonl").open():
        example = parse_generative(json.loads(line))
        _, labels, cut = tokenize_conversation(tok, example.conversation, fmt, args.chat_tokens)
        if cut and any(label != -100 for label in labels):  # fills the length and trains some answer tokens
            chats.append(example)
            if len(chats) == args.chats:
                break
    if len(chats) < args.chats:
        raise SystemExit(f"only {len(chats)} GSM8K chats have answer tokens within --chat-tokens {args.chat_tokens}")
    gen = collate_generative(tok, chats, fmt, args.chat_tokens)
    return emb, gen


def plain_step(lm, optimizer, params, emb, gen, compute_dtype, device) -> None:
    """The hand-written peer: the same forward passes and losses with transformers' defaults."""
    autocast = torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32)

    def embed(ids, mask):
        with autocast:
            hidden = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (n, T, H), causal attention
        m = mask[..., None].float()
        return torch.nn.functional.normalize((hidden.float() * m).sum(1) / m.sum(1), dim=-1)

    q, p = embed(emb.query_ids, emb.query_padding), embed(emb.passage_ids, emb.passage_padding)
    scores = q @ p.T / 0.02  # (B, B*G)
    target = torch.arange(len(q), device=device) * emb.group_size
    with autocast:
        loss_gen = lm(input_ids=gen.input_ids, attention_mask=gen.attention_mask, labels=gen.labels).loss
    (torch.nn.functional.cross_entropy(scores, target) + loss_gen).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_variant(loop: str, lora: bool, args: argparse.Namespace, emb, gen) -> dict[str, float]:
    """Build the model in this (fresh) process, train one warm-up and ``args.steps`` timed steps."""
    from grit.hardware import resolve_placement
    from grit.train.build import build_model, build_optimizer, build_scheduler
    from grit.train.config import DataConfig, LoraConfig, TrainConfig
    from grit.train.distributed import Dist
    from grit.train.trainer import optimizer_step

    data = DataConfig(["bench.jsonl"], ["bench.jsonl"], embedding_batch_size=args.queries)
    cfg = TrainConfig(model=args.model, dtype=args.dtype, lr=1e-5, scheduler="constant", warmup_steps=0,
                      data=data, lora=LoraConfig(enabled=lora, dropout=args.lora_dropout))  # fmt: skip
    placement = resolve_placement(cfg.device, cfg.dtype, cfg.threads or None)  # as grit.train.train does
    cfg = cfg.resolved(placement)
    d = Dist(device=placement.device)
    trainee = build_model(cfg, d)
    params = [p for _, p in trainee.named_params()]
    optimizer = build_optimizer(trainee, cfg)
    emb, gen = emb.to(d.device), gen.to(d.device)
    if loop == "grit":
        scheduler = build_scheduler(optimizer, cfg, total_steps=args.steps + 1)

        def step() -> None:
            optimizer_step(trainee, lambda: (emb, gen), optimizer, scheduler, params, cfg, d)
    else:

        def step() -> None:
            plain_step(trainee.lm, optimizer, params, emb, gen, trainee.compute_dtype, d.device)

    step()  # warm-up: allocator, kernels, optimizer state
    times = []
    for _ in range(args.steps):
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if d.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": statistics.median(times), "peak_mib": peak, "dtype": str(trainee.compute_dtype)[6:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF folder or .gguf (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--queries", type=int, default=8, help="queries; passages are 2 per query (pos + hard neg)")
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--passage-tokens", type=int, default=128)
    parser.add_argument("--chats", type=int, default=8)
    parser.add_argument("--chat-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant, after one warm-up step")
    parser.add_argument("--variants", default="full,lora", help="full, lora or both")
    parser.add_argument("--loops", default="grit,plain", help="grit, plain or both")
    parser.add_argument("--lora-dropout", type=float, default=0.1, help="LoRA dropout (GritLM: 0.1)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line (bench/train_recipe.py reads it)")
    args = parser.parse_args()

    emb, gen = make_batch(args)
    tokens = int(emb.query_padding.sum() + emb.passage_padding.sum() + gen.attention_mask.sum())
    context = multiprocessing.get_context("spawn")
    results = {}
    loops = args.loops.split(",")
    for variant in args.variants.split(","):
        for loop in loops:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:  # a fresh process each
                results[variant, loop] = pool.submit(run_variant, loop, variant == "lora", args, emb, gen).result()
    dtype = next(iter(results.values()))["dtype"]
    print(f"model {args.model or 'SmolLM2-135M-Instruct'}, dtype {dtype}, threads {torch.get_num_threads()}, "
          f"batch {args.queries} queries x {args.query_tokens} + {2 * args.queries} passages x "
          f"{args.passage_tokens} + {args.chats} chats x {args.chat_tokens} = {tokens} tokens, "
          f"median of {args.steps} steps")  # fmt: skip
    print(f"  {'':<12} {'tokens/s':>9} {'s/step':>8} {'peak MiB':>9}")
    for variant in args.variants.split(","):
        for loop in loops:
            r = results[variant, loop]
            print(f"  {variant:<5} {loop:<6} {tokens / r['seconds']:9.0f} {r['seconds']:8.2f} {r['peak_mib']:9.0f}")
        if len(loops) < 2:
            continue
        ratio = results[variant, "plain"]["seconds"] / results[variant, "grit"]["seconds"]
        memory = results[variant, "grit"]["peak_mib"] / results[variant, "plain"]["peak_mib"]
        print(f"  {variant:<5} grit / plain: {ratio:.2f}x the throughput, {memory:.2f}x the peak memory")
    if args.json:
        first = results[args.variants.split(",")[0], loops[0]]
        print(json.dumps({"tokens": tokens, "tokens_per_s": tokens / first["seconds"], **first}))


if __name__ == "__main__":
    main()
