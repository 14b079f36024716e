"""Generative tasks: perplexity on assistant turns, reading-comprehension QA, and instruction following.

    PerplexityTask   exp(mean NLL) of the assistant tokens (answer + end token) given the chat prompt
    ReadingQATask    greedy answer to question + gold passage in one fixed prompt; SQuAD exact match and token F1
    InstructionTask  greedy answer to the user turn, judged against the reference by token F1 and ROUGE-L

Decoding is greedy (temperature 0), so every run gives the same text. A prompt that does not fit in the model's
context with ``max_new_tokens`` is left out, counted and warned about; it is never cut silently.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from grit.eval import data, metrics
from grit.eval.cache import EmbeddingCache
from grit.eval.encoders import Generator
from grit.eval.tasks import Scores, check_limit, min_limit

log = logging.getLogger(__name__)

QA_PROMPT = (
    "Answer the question using the passage. Reply with the answer only: the shortest span of the passage that "
    "answers it.\n\n{title}Passage: {passage}\n\nQuestion: {question}"
)


def fits(model: Any, prompt: str | list[dict[str, str]], max_new_tokens: int) -> bool:
    """Whether ``model.generate(prompt)`` fits in the context; True for a model that cannot say (no ``chat_ids``)."""
    if not (hasattr(model, "chat_ids") and hasattr(model, "context_length")):
        return True
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return len(model.chat_ids(messages)) + max_new_tokens <= model.context_length


# Prompts decoded together by a model that can (GritModel.generate_batch): about twice the prompts per second on a
# 2-core CPU, and greedy answers equal to one-at-a-time ones, so scores do not depend on it.
GENERATION_BATCH = 8


def generate_all(model: Any, prompts: list[Any], max_new_tokens: int, desc: str) -> list[str | None]:
    """Greedy answers in order; None where the prompt does not fit (counted in one warning)."""
    out: list[str | None] = [None] * len(prompts)
    fit = [i for i, prompt in enumerate(prompts) if fits(model, prompt, max_new_tokens)]
    batched = getattr(model, "generate_batch", None)
    # Hand the model several batches at once: it groups them by length, so its batches pad little.
    step = 8 * GENERATION_BATCH if batched else 1
    with tqdm(total=len(fit), desc=desc, unit="prompt") as bar:
        for start in range(0, len(fit), step):
            chunk = fit[start : start + step]
            if batched:
                texts = batched([prompts[i] for i in chunk], max_new_tokens=max_new_tokens, temperature=0.0,
                                batch_size=GENERATION_BATCH)  # fmt: skip
            else:
                texts = [model.generate(prompts[chunk[0]], max_new_tokens=max_new_tokens, temperature=0.0)]
            for i, text in zip(chunk, texts, strict=True):
                out[i] = text
            bar.update(len(chunk))
    if skipped := sum(x is None for x in out):
        log.warning(
            "%s: %d of %d prompts do not fit the context with max_new_tokens=%d and were left out",
            desc,
            skipped,
            len(prompts),
            max_new_tokens,
        )
    return out


@dataclass
class PerplexityTask:
    """Perplexity of the assistant turns of held conversations: exp(total NLL / total assistant tokens).

    Each assistant turn is scored given everything before it, rendered by the model's chat format; its targets are
    the answer's tokens plus the end-of-turn token (so stopping on time counts). Padding is on the right and masked.
    """

    name: str
    path: Path
    limit: int | None = None  # conversations
    heldout_only: bool = False  # score only the rows grit.splits keeps out of training (for training files)
    batch_size: int = 4  # the (B, T, vocab) logits dominate memory: 4 x 512 x 49k floats is ~400 MB

    def __post_init__(self) -> None:
        check_limit(self.limit)

    def supports(self, model: Any) -> bool:
        return all(
            hasattr(model, a) for a in ("target_nll", "chat_ids", "token_ids", "end_token_id", "context_length")
        )

    def limited(self, n: int | None) -> PerplexityTask:
        return dataclasses.replace(self, limit=min_limit(self.limit, n))

    def examples(self, model: Any) -> tuple[list[tuple[list[int], list[int]]], dict[str, int]]:
        """(prompt ids, target ids) for each non-empty assistant turn, and counts of the turns left out (empty) or
        cut (an over-long turn loses its oldest prompt tokens; the answer is kept). Both are warned about."""
        end = model.end_token_id
        out, cut, empty = [], 0, 0
        for conv in data.sample(data.read_generative(self.path, self.heldout_only), self.limit):
            for turn in range(1, len(conv.turns), 2):
                if not conv.turns[turn].strip():  # an empty answer says nothing about the text
                    empty += 1
                    continue
                prompt = model.chat_ids(conv.messages(upto=turn))
                target = model.token_ids(conv.turns[turn]) + [end]
                overflow = len(prompt) + len(target) - model.context_length
                if overflow > 0:
                    cut += 1
                    prompt = prompt[min(overflow, len(prompt)) :]
                    target = target[: model.context_length]
                out.append((prompt, target))
        if empty:
            log.warning("%s: %d empty assistant turns were left out", self.name, empty)
        if cut:
            log.warning(
                "%s: %d of %d turns were longer than the context (%d tokens); their oldest prompt tokens were dropped",
                self.name,
                cut,
                len(out),
                model.context_length,
            )
        return out, {"empty_turns": empty, "cut_to_context": cut}

    def evaluate(self, model: Any, cache: EmbeddingCache | None = None) -> Scores:
        examples, counts = self.examples(model)
        total_nll, total_tokens = model.target_nll(examples, self.batch_size, desc=self.name)
        nll = total_nll / total_tokens if total_tokens else float("nan")
        values = {"perplexity": math.exp(nll), "nll_per_token": nll}
        return Scores(values, len(examples), skipped=counts["empty_turns"], details={"tokens": total_tokens, **counts})


@dataclass
class ReadingQATask:
    """Extractive QA with the gold passage in the prompt (no retrieval): SQuAD exact match and token F1, the best
    over the gold answers. The RAG tasks (retrieve, then answer from cached documents) build on the same data."""

    name: str
    path: Path
    limit: int | None = None  # questions
    heldout_only: bool = False  # score only the rows grit.splits keeps out of training (for training files)
    max_new_tokens: int = 32
    prompt: str = QA_PROMPT

    def __post_init__(self) -> None:
        check_limit(self.limit)

    def supports(self, model: Any) -> bool:
        return isinstance(model, Generator)

    def limited(self, n: int | None) -> ReadingQATask:
        return dataclasses.replace(self, limit=min_limit(self.limit, n))

    def format(self, ex: data.QaExample) -> str:
        title = f"Title: {ex.title}\n" if ex.title else ""
        return self.prompt.format(title=title, passage=ex.passage, question=ex.question)

    def evaluate(self, model: Any, cache: EmbeddingCache | None = None) -> Scores:
        rows = data.sample(data.read_rag(self.path, self.heldout_only), self.limit)
        answers = generate_all(model, [self.format(r) for r in rows], self.max_new_tokens, self.name)
        scored = [(first_line(a), r.answers) for a, r in zip(answers, rows, strict=True) if a is not None]
        em = [metrics.exact_match(a, gold) for a, gold in scored]
        f1 = [metrics.token_f1(a, gold) for a, gold in scored]
        values = {"exact_match": mean(em), "f1": mean(f1)}
        return Scores(values, len(scored), skipped=len(rows) - len(scored))


@dataclass
class InstructionTask:
    """Follow the instruction in each user turn; the answer is judged by overlap with the reference answer
    (SQuAD token F1 and ROUGE-L F1, both by hand in ``metrics``). Cheap and deterministic, no judge model: it
    rewards answers in the reference's words and misses paraphrases, so read it as a trend, not a grade."""

    name: str
    path: Path
    limit: int | None = None  # conversations (the last user turn of each is answered)
    heldout_only: bool = False  # score only the rows grit.splits keeps out of training (for training files)
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        check_limit(self.limit)

    def supports(self, model: Any) -> bool:
        return isinstance(model, Generator)

    def limited(self, n: int | None) -> InstructionTask:
        return dataclasses.replace(self, limit=min_limit(self.limit, n))

    def evaluate(self, model: Any, cache: EmbeddingCache | None = None) -> Scores:
        rows = data.sample(data.read_generative(self.path, self.heldout_only), self.limit)
        empty = [r for r in rows if not r.turns[-1].strip()]
        if empty:
            log.warning("%s: %d of %d references are empty and were left out", self.name, len(empty), len(rows))
        rows = [r for r in rows if r.turns[-1].strip()]
        prompts = [r.messages(upto=len(r.turns) - 1) for r in rows]
        answers = generate_all(model, prompts, self.max_new_tokens, self.name)
        scored = [(a.strip(), r.turns[-1]) for a, r in zip(answers, rows, strict=True) if a is not None]
        values = {
            "token_f1": mean([metrics.token_f1(a, ref) for a, ref in scored]),
            "rouge_l": mean([metrics.rouge_l(a, ref) for a, ref in scored]),
            "exact_match": mean([metrics.exact_match(a, ref) for a, ref in scored]),
        }
        return Scores(values, len(scored), skipped=len(rows) - len(scored) + len(empty))


def first_line(text: str) -> str:
    """The first non-blank line: the answer proper, without any explanation a chat model adds after it."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def mean(values: list[float]) -> float:
    """Mean, NaN for no values (every prompt was too long): a missing score must not read as 0."""
    return float(np.mean(values)) if values else float("nan")
