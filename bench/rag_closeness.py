"""How close answers from joined document caches are to a full prefill (issue 22), and what each setting costs.

    python bench/rag_closeness.py                                  # default model, 20 questions
    python bench/rag_closeness.py --model default --model base --questions 40 --out bench/results/rag_closeness

A 135M model answers many questions wrong in every mode, so answer F1 alone is noise; this measures closeness.
For each held-out AdversarialQA question (``grit.splits``), k documents (its passage and k-1 others of the file,
the gold one at a seeded place) are laid out as ``RAG`` answers in ``doc`` mode: each document as the index embeds
it, then the question in RAG's words (``RagFormat.after_docs``). Per setting:

    kl          mean KL(full || cached) of the next-token distributions over the reference answer's tokens,
                teacher-forced: the full prefill runs documents + question + answer in one causal pass; the cached
                computation runs question + answer on the joined document caches
    agree       share of questions whose greedy answer (``--answer-tokens``) equals the full prefill's
    em, f1      of the cached greedy answer against the references (SQuAD normalisation, grit.eval.metrics)
    ttft        time to the first answer token with the document caches ready (index time is not counted):
                join (+ recompute, which runs the question turn in its own passes, as RAG does) + the forward
                over what is left of the question, against a full prefill's forward

Settings: k, the cache source (causal, or bidirectional: the embedding pass's own states) and ``recompute_ratio``
(``grit.recompute``). Writes closeness.json, closeness.md and closeness.png (KL against TTFT, one curve per model,
source and k) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Row:
    model: str
    k: int
    source: str
    ratio: float
    block_starts: int
    questions: int
    kl: float
    agree: float
    em: float
    f1: float
    ttft_ms: float
    full_ttft_ms: float


@dataclass
class Prompt:
    docs: list[list[int]]
    tail: list[int]
    answer: list[int]
    answers: tuple[str, ...]

    @property
    def context(self) -> list[int]:
        """The documents' tokens, then the question turn: what a full prefill runs before the answer."""
        return [t for d in self.docs for t in d] + self.tail


def prompts(model, examples, k: int, seed: int, doc_tokens: int = 0, pool: list[str] | None = None) -> list:
    """Each question's documents (its own passage and k-1 others, shuffled), RAG's turn after them and the first
    reference answer's tokens. ``doc_tokens``: each document grows by further passages of ``pool`` (seeded) until
    it holds that many tokens, as long retrieved chunks would."""
    from grit.rag.modes import RagFormat

    passages = sorted({ex.passage for ex in examples})
    out = []
    for ex in examples:
        rng = random.Random(f"closeness:{seed}:{ex.id}:{k}")
        others = rng.sample([p for p in passages if p != ex.passage], min(k - 1, len(passages) - 1))
        docs = [grown(model, d, doc_tokens, pool or passages, rng) for d in (ex.passage, *others)]
        rng.shuffle(docs)
        turn = RagFormat().after_docs.format(question=ex.question)
        out.append(Prompt([model.embedding_ids(d) for d in docs], model.chat_ids([{"role": "user", "content": turn}],
                          before="\n"), model.token_ids(ex.answers[0]), ex.answers))  # fmt: skip
    return out


def grown(model, passage: str, tokens: int, pool: list[str], rng: random.Random) -> str:
    """``passage`` followed by passages drawn from ``pool`` until it is ``tokens`` tokens long (0: as it is)."""
    text = passage
    while len(model.token_ids(text)) < tokens:
        text += "\n\n" + rng.choice(pool)
    return text


@torch.inference_mode()
def full_pass(model, p: Prompt) -> tuple[torch.Tensor, float]:
    """Log-probabilities over the answer tokens from one causal pass, and the seconds to the first answer token."""
    context = p.context
    ids = model.as_ids(context + p.answer)
    start = time.perf_counter()
    model.lm(input_ids=model.as_ids(context), logits_to_keep=1)
    seconds = time.perf_counter() - start
    logits = model.lm(input_ids=ids).logits[0, len(context) - 1 : -1]
    return torch.log_softmax(logits.float(), -1), seconds


@torch.inference_mode()
def cached_pass(model, p: Prompt, spans, ratio: float, starts: int = 0) -> tuple[torch.Tensor, float, object]:
    """Log-probabilities over the answer tokens on the joined (and recomputed) caches, the seconds to the first
    answer token, and the cache again (cut back to what precedes the answer's prefill) for greedy decoding. With
    recompute, the question turn but its last token runs in the recompute's own passes, as RAG does."""
    from grit.recompute import fused_suffix, recompute_joined
    from grit.transformers_compat import cache_argument, crop_cache

    fused = fused_suffix(p.tail, ratio)  # as RAG does
    at = sum(len(d) for d in p.docs) + len(fused)  # what the cache holds before the prefill below
    rest = p.tail[len(fused) :]

    def run(tokens: list[int], past, **options):
        where = torch.arange(at, at + len(tokens), device=model.device)[None]
        out = model.lm(input_ids=model.as_ids(tokens), position_ids=where, use_cache=True, **cache_argument(past),
                       **options)  # fmt: skip
        crop_cache(past, at)  # back to where it was, for the next use
        return out

    start = time.perf_counter()
    past = recompute_joined(model.lm.base_model, spans, ratio, block_starts=starts, suffix=fused)[0]
    run(rest, past, logits_to_keep=1)  # as the full pass and RAG's own prefill: the last position's logits only
    seconds = time.perf_counter() - start
    logits = run(rest + p.answer, past).logits[0, len(rest) - 1 : -1]
    return torch.log_softmax(logits.float(), -1), seconds, past


def recompute_grid(ratios: list[float], block_starts: list[int]) -> list[tuple[float, int]]:
    """(ratio, block starts) pairs: each ratio with no forced starts, and the partial ratios with each count."""
    return [(r, b) for r in ratios for b in sorted({0, *block_starts}) if b == 0 or 0 < r < 1]


def measure(model, name: str, examples, ks, sources, grid, answer_tokens: int, seed: int, doc_tokens: int = 0,
            pool: list[str] | None = None) -> list[Row]:  # fmt: skip
    from tqdm import tqdm

    from grit.eval.metrics import exact_match, token_f1
    from grit.generation import SamplingParams
    from grit.kvcache import compute_cache

    params = SamplingParams(answer_tokens)
    rows = []
    for k in ks:
        items = prompts(model, examples, k, seed, doc_tokens, pool)
        warm = [compute_cache(model.lm.base_model, d, "causal") for d in items[0].docs]
        full_pass(model, items[0]), cached_pass(model, items[0], warm, 0.5)  # allocator, kernels: untimed
        fulls = []
        for p in tqdm(items, desc=f"{name} k={k} full prefill", leave=False):
            logp, seconds = full_pass(model, p)
            fulls.append((logp, seconds, model.complete(model.as_ids(p.context), params).text))
        for source in sources:
            spans = [[compute_cache(model.lm.base_model, d, source) for d in p.docs] for p in items]
            for ratio, starts in tqdm(grid, desc=f"{name} k={k} {source}", leave=False):
                kls, agree, em, f1, ttft = [], [], [], [], []
                for p, doc_spans, (full_logp, _, full_text) in zip(items, spans, fulls, strict=True):
                    logp, seconds, past = cached_pass(model, p, doc_spans, ratio, starts)
                    kls.append((full_logp.exp() * (full_logp - logp)).sum(-1).mean().item())
                    text = model.complete(model.as_ids(p.context), params, cache=past).text  # after the cache
                    agree.append(float(text == full_text))
                    em.append(exact_match(text, p.answers))
                    f1.append(token_f1(text, p.answers))
                    ttft.append(seconds)
                full_ms = 1000 * sum(s for _, s, _ in fulls) / len(fulls)
                rows.append(Row(name, k, source, ratio, starts, len(items), mean(kls), mean(agree), mean(em), mean(f1),
                                1000 * mean(ttft), full_ms))  # fmt: skip
                print(table_line(rows[-1]), flush=True)
    return rows


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


HEADER = (
    "| model | k | cache source | recompute | starts | KL to full | agree | EM | F1 | TTFT ms | full ms "
    "| TTFT / full |"
)


def table_line(r: Row) -> str:
    return (f"| {r.model} | {r.k} | {r.source} | {r.ratio:g} | {r.block_starts} | {r.kl:.2e} | {r.agree:.0%} "
            f"| {r.em:.3f} | {r.f1:.3f} | {r.ttft_ms:.0f} | {r.full_ttft_ms:.0f} "
            f"| {r.ttft_ms / r.full_ttft_ms:.2f} |")  # fmt: skip


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r.model, r.source, r.k, r.block_starts) for r in rows}):
        line = sorted((r for r in rows if (r.model, r.source, r.k, r.block_starts) == key), key=lambda r: r.ratio)
        starts = f", starts {key[3]}" if key[3] else ""
        ax.plot([r.ttft_ms / r.full_ttft_ms for r in line], [max(r.kl, 1e-6) for r in line], "o-" if not starts
                else "x--", label=f"{key[0]}, {key[1]}, k={key[2]}{starts}")  # fmt: skip
        for r in line:
            ax.annotate(f"{r.ratio:g}", (r.ttft_ms / r.full_ttft_ms, max(r.kl, 1e-6)), fontsize=7)
    ax.set_xlabel("time to first token / full prefill's")
    ax.set_ylabel("KL to the full prefill (answer tokens)")
    ax.set_yscale("log")
    ax.set_title("Joined document caches: closeness against cost (labels: recompute ratio)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="default, base, or a folder (repeat to compare)")
    parser.add_argument("--data", type=Path, default=SHARED / "rag" / "adversarialqa.jsonl")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 5])
    sources = ["causal", "bidirectional"]
    parser.add_argument("--sources", nargs="+", default=sources, choices=sources)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.05, 0.15, 0.3, 1.0])
    parser.add_argument("--block-starts", type=int, nargs="+", default=[0],
                        help="also run each partial ratio with the first N tokens of every document always "
                        "recomputed (grit.recompute's block_starts)")  # fmt: skip
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--doc-tokens", type=int, default=0,
                        help="grow each document with further held-out passages to this many tokens (0: one "
                        "passage, ~130 tokens), to see recompute's cost at the lengths long chunks have")  # fmt: skip
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/rag_closeness"))
    args = parser.parse_args()
    from grit import GritModel
    from grit.eval.data import read_rag
    from grit.hardware import describe_machine

    if not args.data.is_file():
        raise SystemExit(f"{args.data} does not exist (../shared/data is not beside the repository?)")
    heldout = read_rag(args.data, heldout_only=True)
    examples = heldout[: args.questions]
    pool = sorted({ex.passage for ex in heldout})  # filler for --doc-tokens: held-out text only
    rows = []
    for name in args.model or ["default"]:
        model = GritModel.load(None if name == "default" else name, base_only=name == "base", dtype=args.dtype)
        grid = recompute_grid(args.ratios, args.block_starts)
        rows += measure(model, name, examples, args.k, args.sources, grid, args.answer_tokens, args.seed,
                        args.doc_tokens, pool)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    settings = vars(args) | {"data": str(args.data), "out": str(args.out)}
    result = {"machine": machine, "args": settings, "rows": [asdict(r) for r in rows]}
    (args.out / "closeness.json").write_text(json.dumps(result, indent=2) + "\n")
    docs = f"documents grown to {args.doc_tokens} tokens" if args.doc_tokens else "one passage per document"
    lines = [f"{machine}; {args.dtype}; {len(examples)} questions; {docs}; {args.answer_tokens} greedy tokens", "",
             HEADER, "|" + "---|" * 12, *map(table_line, rows)]  # fmt: skip
    (args.out / "closeness.md").write_text("\n".join(lines) + "\n")
    plot(rows, args.out / "closeness.png")
    print(f"wrote {args.out}/closeness.{{json,md,png}}")


if __name__ == "__main__":
    main()
