"""Training data in GritLM's JSON-lines formats, and a deterministic, resumable batch sampler.

One file is one data set (``.jsonl`` or ``.jsonl.gz``). Two kinds, as GritLM's ``training/data.py``:

    embedding   {"query": Q, "pos": [P, ...], "neg": [P, ...]}     Q, P: "text" or ["instruction", "text"]
                {"question": Q, "passage": P, ...}                    (a passage-QA row, as in grit's RAG files)
    generative  {"text": ["user", "assistant", "user", "assistant", ...]}
                {"text": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}   (grit extension)
                {"text": "plain text"}                                (no chat format; every token is trained)

``neg`` may be missing or empty. Other keys (``source``, ``id``) are ignored. A malformed line raises
``DataFormatError`` naming the file and line; with ``skip_bad_lines`` it is skipped, counted and logged.

Each contrastive batch draws all its queries from one file (``BatchSampler(same_dataset=True)``), so the in-batch
negatives come from the same task, as GritLM's ``CustomRandomSampler`` does (GritLM merges the leftovers of each file
into mixed batches; we drop them instead, so the rule has no exception, and reshuffle each epoch).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grit.formats import Message, as_messages
from grit.jsonl import DataFormatError, read_jsonl
from grit.rag.modes import RagFormat
from grit.splits import is_held_out

log = logging.getLogger(__name__)

Text = tuple[str, str]  # (instruction, text); instruction "" for none


@dataclass
class EmbeddingExample:
    query: Text
    pos: list[Text]
    neg: list[Text] = field(default_factory=list)


@dataclass
class GenerativeExample:
    """A chat (trained on the assistant turns) or a plain string (trained on every token).

    A cache-aware RAG row (issue 22) also has ``passages``: documents laid out before the chat as a RAG answer
    reads them from cache, each a block of its own (``grit.packing.allowed_attention``), computed as
    ``passage_attention`` says (the embedding pass's bidirectional states, or causal ones)."""

    conversation: list[Message] | str
    passages: list[str] = field(default_factory=list)
    passage_attention: Literal["bidirectional", "causal"] = "bidirectional"


@dataclass
class Dataset:
    """The examples of one file, and how many malformed lines were skipped."""

    path: Path
    examples: list[Any]
    skipped: int = 0  # malformed lines
    held_out: int = 0  # rows left out for evaluation (grit.splits)

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class EmbeddingGroup:
    """A query and its passages: ``passages[0]`` is the positive, the rest are hard negatives."""

    query: Text
    passages: list[Text]


# --- parsing one example -----------------------------------------------------------------------------------------


def parse_text(value: Any, what: str) -> Text:
    """``"text"`` or ``["instruction", "text"]`` → (instruction, text).

    The instruction is stripped of whitespace and a trailing ``:`` as GritLM does: MEDI-style instructions end in
    ``": "``, which the embedding format's ``\\n<|embed|>\\n`` replaces.
    """
    if isinstance(value, str):
        instruction, text = "", value
    elif isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        instruction, text = value[0].strip("\t\n :"), value[1]
    else:
        raise ValueError(f"{what} must be a string or [instruction, text], got {value!r:.80}")
    if not text.strip():
        raise ValueError(f"{what} has an empty text; there is nothing to embed")
    return instruction, text


def parse_embedding(obj: Any) -> EmbeddingExample:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "query" not in obj and "question" in obj and "passage" in obj:  # a passage-QA row (grit's RAG files)
        return EmbeddingExample(parse_text(obj["question"], "question"), [parse_text(obj["passage"], "passage")])
    if "query" not in obj and "text" in obj and "label" in obj:  # a classification row: the text -> its label
        return EmbeddingExample(parse_text(obj["text"], "text"), [("", label_text(obj["label"]))])
    for key in ("query", "pos"):
        if key not in obj:
            raise ValueError(f"missing key {key!r} (an embedding example has query, pos and optional neg)")
    passages = {}
    for key in ("pos", "neg"):
        items = obj.get(key) or []
        if not isinstance(items, list):
            raise ValueError(f"{key} must be a list of passages, got {type(items).__name__}")
        passages[key] = [parse_text(p, f"{key}[{i}]") for i, p in enumerate(items)]
    if not passages["pos"]:
        raise ValueError("pos is empty; every query needs at least one positive passage")
    return EmbeddingExample(parse_text(obj["query"], "query"), passages["pos"], passages["neg"])


def parse_cached_rag(obj: dict) -> GenerativeExample:
    """A passage-QA row (grit's RAG files: question, passage, answers) as a cache-aware RAG chat: the question in
    the words ``RAG`` puts after cached documents (``RagFormat.after_docs``), the first answer as the reply."""
    question, passage = obj["question"], obj["passage"]
    for name, value in (("question", question), ("passage", passage)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, got {value!r:.80}")
    answers = obj.get("answers", obj.get("answer"))
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"answers must be a string or a list of strings, got {answers!r:.80}")
    answer = next((a.strip() for a in answers if a.strip()), "")
    if not answer:
        raise ValueError("the row has no answer, so nothing to train on")
    turn = RagFormat().after_docs.format(question=question.strip())
    conversation = [{"role": "user", "content": turn}, {"role": "assistant", "content": answer}]
    return GenerativeExample(conversation, [passage])


def label_text(label: Any) -> str:
    """A class label as the passage a classification row's text is paired with: ``card_arrival`` → ``card
    arrival``. Rows with one label share one positive, which the loss does not count as their negatives."""
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise ValueError(f"label must be a string or an integer, got {label!r:.80}")
    text = str(label).replace("_", " ").strip()
    if not text:
        raise ValueError("label is empty")
    return text


def parse_generative(obj: Any) -> GenerativeExample:
    if isinstance(obj, dict) and "text" not in obj and "question" in obj and "passage" in obj:
        return parse_cached_rag(obj)
    if not isinstance(obj, dict) or "text" not in obj:
        raise ValueError('expected a JSON object with key "text" (or a passage-QA row: question, passage, answers)')
    text = obj["text"]
    if isinstance(text, str):
        if not text.strip():
            raise ValueError("text is empty")
        return GenerativeExample(text)
    if not isinstance(text, list) or not text:
        raise ValueError(f"text must be a string or a non-empty list of turns, got {text!r:.80}")
    if all(isinstance(t, str) for t in text):
        if len(text) % 2:
            raise ValueError(f"text has {len(text)} turns; expected user/assistant pairs (an even number)")
        messages = [{"role": "assistant" if i % 2 else "user", "content": t} for i, t in enumerate(text)]
    else:
        try:
            messages = as_messages(text)
        except TypeError as e:
            raise ValueError(f"text must be all strings or all messages: {e}") from None
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("text has no assistant turn, so nothing to train on")
    for m in messages:
        if m["role"] == "assistant":
            # Stripped as GritLM does: converted targets often carry a leading space or newline from their source
            # (P3), which would teach the model to start every answer with one.
            m["content"] = m["content"].strip()
            if not m["content"]:
                # It would train only the end-of-turn marker: the model learns to answer with nothing. (The P3 trec
                # templates in shared/data lost their targets this way; skip_bad_lines drops them.)
                raise ValueError("an assistant turn is empty")
    return GenerativeExample(messages)


# --- reading files -----------------------------------------------------------------------------------------------


def read_dataset(
    path: str | Path, parse: Callable[[Any], Any], skip_bad_lines: bool = False, exclude_heldout: bool = False
) -> Dataset:
    """Parse every non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file with ``parse`` (``grit.jsonl``); with
    ``exclude_heldout``, leave out the rows ``grit.splits`` keeps for evaluation."""
    path = Path(path)
    if not path.name.endswith((".jsonl", ".jsonl.gz")):
        raise ValueError(f"data file {str(path)!r} must be .jsonl or .jsonl.gz")
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")

    def parse_row(obj: Any) -> Any:
        return HELD_OUT if exclude_heldout and isinstance(obj, dict) and is_held_out(obj) else parse(obj)

    skipped: list[DataFormatError] = []
    rows = [row for _, row in read_jsonl(path, parse_row, objects=False, skip_bad_lines=skip_bad_lines,
                                         skipped=skipped)]  # fmt: skip
    examples = [row for row in rows if row is not HELD_OUT]
    held_out, bad = len(rows) - len(examples), len(skipped)
    if bad:
        log.warning("%s: skipped %d malformed of %d lines; first: %s", path, bad, bad + len(rows), skipped[0])
    if held_out:
        log.info("%s: left out %d rows held out for evaluation (grit.splits)", path, held_out)
    if not examples:
        raise DataFormatError(path, None, "holds no valid examples")
    return Dataset(path, examples, bad, held_out)


HELD_OUT = object()  # what ``read_dataset`` parses a held-out row into


def read_embedding_files(
    paths: Sequence[str | Path], skip_bad_lines: bool = False, exclude_heldout: bool = False
) -> list[Dataset]:
    return [read_dataset(p, parse_embedding, skip_bad_lines, exclude_heldout) for p in paths]


def add_default_instructions(datasets: Sequence[Dataset], query: str, passage: str) -> None:
    """Give ``query`` / ``passage`` as the instruction to every text of ``datasets`` that has none (in place)."""

    def fill(text: Text, instruction: str) -> Text:
        return text if text[0] or not instruction else (instruction.strip("\t\n :"), text[1])

    for dataset in datasets:
        for ex in dataset.examples:
            ex.query = fill(ex.query, query)
            ex.pos = [fill(t, passage) for t in ex.pos]
            ex.neg = [fill(t, passage) for t in ex.neg]


def drop_short_answers(datasets: Sequence[Dataset], min_words: int) -> None:
    """Leave out the chats whose every assistant turn has fewer than ``min_words`` words (in place; plain-text rows
    count all their words).

    Why: instruction mixes such as P3 are two-thirds label targets ("positive", "B", a span of three words). Trained
    on those, a chat model learns to answer in one word, which the overlap metrics reward and users do not.
    """
    if min_words <= 0:
        return
    for dataset in datasets:
        before = len(dataset.examples)
        # Cache-aware RAG rows stay: their answers are spans of the passage, short by nature, and their user turn
        # says so, which a chat does not.
        dataset.examples = [ex for ex in dataset.examples if ex.passages or answer_words(ex) >= min_words]
        if not dataset.examples:
            raise DataFormatError(dataset.path, None, f"holds no chat with an answer of {min_words} words or more")
        if len(dataset.examples) < before:
            dropped = before - len(dataset.examples)
            log.info(
                "%s: left out %d of %d chats with answers under %d words", dataset.path, dropped, before, min_words
            )


def answer_words(example: GenerativeExample) -> int:
    """Words in the longest assistant turn (in the whole text, for plain text)."""
    if isinstance(example.conversation, str):
        return len(example.conversation.split())
    return max(len(m["content"].split()) for m in example.conversation if m["role"] == "assistant")


def read_generative_files(
    paths: Sequence[str | Path], skip_bad_lines: bool = False, exclude_heldout: bool = False
) -> list[Dataset]:
    return [read_dataset(p, parse_generative, skip_bad_lines, exclude_heldout) for p in paths]


# --- batches -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One batch from the sampler: ``items`` are (dataset, example index) pairs."""

    epoch: int
    step: int  # position of this batch within its epoch
    items: tuple[tuple[int, int], ...]


class BatchSampler:
    """Endless batches of (dataset, index) pairs, reshuffled each epoch from ``seed`` alone.

    ``same_dataset=True``: each batch comes from one data set; each data set's incomplete last batch is dropped (a
    different remainder each epoch). ``False``: all examples are pooled and shuffled together (generative data).
    Batches of all data sets are interleaved at random, so a data set is drawn in proportion to its size, unless
    ``weights`` says otherwise: then data set ``i`` gets ``weights[i] / sum(weights)`` of each epoch's batches (of
    its examples, when pooled). An epoch keeps its unweighted length; a data set asked for more than it has goes
    round again in a fresh order (never twice in one batch), one asked for less gives a different part each epoch.

    The plan of an epoch is a pure function of (seed, epoch), so ``state_dict`` is just (epoch, position) and a
    resumed sampler continues with exactly the batch that would have come next.

    Example:
        >>> s = BatchSampler([100, 40], batch_size=8, seed=0)
        >>> first = next(s); state = s.state_dict()
        >>> t = BatchSampler([100, 40], batch_size=8, seed=0); t.load_state_dict(state)
        >>> next(t) == next(s)
        True
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        seed: int = 0,
        same_dataset: bool = True,
        weights: Sequence[float] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not sizes or min(sizes) < 0:
            raise ValueError(f"sizes must be a non-empty list of data set sizes, got {list(sizes)}")
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(sizes):
                raise ValueError(f"{len(weights)} weights for {len(sizes)} data sets")
            if not all(math.isfinite(w) and w > 0 for w in weights):
                raise ValueError(f"weights must be finite and > 0, got {weights}")
        self.sizes, self.batch_size, self.seed, self.same_dataset = list(sizes), batch_size, seed, same_dataset
        self.weights = weights
        if same_dataset:
            small = [i for i, n in enumerate(self.sizes) if n < batch_size]
            if small:
                log.warning(
                    "data sets %s have fewer than batch_size=%d examples and are never drawn", small, batch_size
                )
        if len(self) == 0:
            raise ValueError(f"no full batch of {batch_size} can be made from data sets of sizes {self.sizes}")
        self.epoch, self.position = 0, 0
        self._plan: list[list[tuple[int, int]]] | None = None

    def __len__(self) -> int:
        """Batches per epoch (the same for every epoch)."""
        if self.same_dataset:
            return sum(n // self.batch_size for n in self.sizes)
        return sum(self.sizes) // self.batch_size

    def plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        """All batches of ``epoch``, in order."""
        rng = random.Random(f"grit-sampler:{self.seed}:{epoch}")  # str seeds are stable across runs and platforms
        bs = self.batch_size
        if self.same_dataset:
            batches = []
            if self.weights is None:
                for d, n in enumerate(self.sizes):
                    order = list(range(n))
                    rng.shuffle(order)
                    batches += [[(d, i) for i in order[s : s + bs]] for s in range(0, n - n % bs, bs)]
            else:
                usable = [w if n >= bs else 0.0 for w, n in zip(self.weights, self.sizes, strict=True)]
                for d, count in enumerate(apportion(len(self), usable)):
                    order = cycled_order(rng, self.sizes[d], count * bs, self.sizes[d] // bs * bs)
                    batches += [[(d, i) for i in order[s : s + bs]] for s in range(0, count * bs, bs)]
            rng.shuffle(batches)
            return batches
        if self.weights is None:
            pairs = [(d, i) for d, n in enumerate(self.sizes) for i in range(n)]
        else:
            usable = [w if n else 0.0 for w, n in zip(self.weights, self.sizes, strict=True)]
            counts = apportion(len(self) * bs, usable)
            pairs = [(d, i) for d, c in enumerate(counts) for i in cycled_order(rng, self.sizes[d], c, self.sizes[d])]
        rng.shuffle(pairs)
        return [pairs[s : s + bs] for s in range(0, len(pairs) - len(pairs) % bs, bs)]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.position >= len(self):
            self.epoch, self.position, self._plan = self.epoch + 1, 0, None
        if self._plan is None:
            self._plan = self.plan(self.epoch)
        batch = Batch(self.epoch, self.position, tuple(self._plan[self.position]))
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where the sampler stands: the next batch is number ``position`` of ``epoch``."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "sizes": list(self.sizes),
            "same_dataset": self.same_dataset,
            "weights": self.weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``. The data and settings must match, or the resumed order would differ."""
        state = {"weights": None, **state}  # checkpoints from before weights existed were unweighted
        for key in ("seed", "batch_size", "sizes", "same_dataset", "weights"):
            mine = getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler has {mine!r}")
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"sampler state position {state['position']} is outside 0..{len(self)}")
        self.epoch, self.position, self._plan = state["epoch"], state["position"], None


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` into whole numbers that sum to it (largest remainders first;
    ties to the earlier). A zero weight gets nothing.

        >>> apportion(10, [1, 1, 1])
        [4, 3, 3]
    """
    whole = sum(weights)
    if whole <= 0:
        raise ValueError("no data set can be drawn: every weight is zero")
    quotas = [total * w / whole for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: (counts[i] - quotas[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def cycled_order(rng: random.Random, n: int, count: int, per_round: int) -> list[int]:
    """``count`` indices of ``range(n)``: rounds of a fresh shuffle, each cut to its first ``per_round`` (so a round
    ends on a batch boundary and no batch holds one example twice)."""
    order: list[int] = []
    while len(order) < count:
        round_ = list(range(n))
        rng.shuffle(round_)
        order += round_[:per_round]
    return order[:count]


# --- turning a batch into examples -------------------------------------------------------------------------------


def example_rng(seed: int, epoch: int, dataset: int, index: int) -> random.Random:
    """The random choices for one example in one epoch: fixed by position, so resuming needs no RNG state."""
    return random.Random(f"grit-example:{seed}:{epoch}:{dataset}:{index}")


def embedding_group(dataset: Dataset, index: int, num_negatives: int, rng: random.Random) -> EmbeddingGroup:
    """The query of example ``index``, one of its positives at random and ``num_negatives`` hard negatives.

    With enough negatives, a random subset (as GritLM). With too few, all of its own, then random passages (positive
    or negative) of other examples in the same data set. GritLM repeats the example's own negatives instead (and fails
    with none); a repeated negative adds no information, only more weight on one passage, while a passage of another
    query of the same task is a real, if easier, negative. The rare false negative it may bring is the same risk
    in-batch negatives already take. A data set of one example can only repeat its own negatives.
    """
    ex = dataset.examples[index]
    positive = rng.choice(ex.pos)
    if len(ex.neg) >= num_negatives:
        return EmbeddingGroup(ex.query, [positive, *rng.sample(ex.neg, num_negatives)])
    negatives = rng.sample(ex.neg, len(ex.neg))
    others = len(dataset) - 1
    if others == 0:
        if not ex.neg:
            raise ValueError(f"{dataset.path}: one example with no negatives cannot give {num_negatives} negatives")
        negatives = [ex.neg[i % len(ex.neg)] for i in range(num_negatives)]
    while len(negatives) < num_negatives:
        j = rng.randrange(others)
        other = dataset.examples[j if j < index else j + 1]  # any example but this one
        negatives.append(rng.choice(other.pos + other.neg))
    return EmbeddingGroup(ex.query, [positive, *negatives])


def embedding_groups(
    datasets: Sequence[Dataset], batch: Batch, num_negatives: int, seed: int, from_other_rows: bool = True
) -> list[EmbeddingGroup]:
    """The groups of one sampler batch, reproducible from (seed, epoch, dataset, index). Without
    ``from_other_rows``, a data set none of whose rows has negatives gets none (in-batch negatives only)."""

    negatives = {  # per data set in the batch (one, from the sampler): a scan of its rows, once
        d: num_negatives if from_other_rows or any(ex.neg for ex in datasets[d].examples) else 0
        for d in {d for d, _ in batch.items}
    }
    return [
        embedding_group(datasets[d], i, negatives[d], example_rng(seed, batch.epoch, d, i)) for d, i in batch.items
    ]


def generative_examples(
    datasets: Sequence[Dataset],
    batch: Batch,
    seed: int = 0,
    passages: int = 1,
    attention: Literal["bidirectional", "causal", "mixed"] = "bidirectional",
) -> list[GenerativeExample]:
    """The batch's examples; a cache-aware RAG row gets its documents here: its own passage and ``passages - 1``
    other rows' (distractors, as retrieval brings), in random order, computed with ``attention`` ("mixed": either,
    per row). The choices are fixed by position (``example_rng``), so a resumed run makes the same ones."""
    out = []
    for d, i in batch.items:
        example = datasets[d].examples[i]
        if example.passages:
            rng = example_rng(seed, batch.epoch, d, i)
            documents = with_distractors(datasets[d], i, passages, rng)
            how = rng.choice(("bidirectional", "causal")) if attention == "mixed" else attention
            example = GenerativeExample(example.conversation, documents, how)
        out.append(example)
    return out


def with_distractors(dataset: Dataset, index: int, passages: int, rng: random.Random) -> list[str]:
    """Example ``index``'s passages and other rows' up to ``passages`` in all (fewer when the file has no more
    distinct ones), shuffled."""
    own = list(dataset.examples[index].passages)
    chosen, seen = list(own), set(own)
    others = [j for j in rng.sample(range(len(dataset)), min(len(dataset), 4 * passages + 8)) if j != index]
    for j in others:
        if len(chosen) >= passages:
            break
        for text in dataset.examples[j].passages:
            if text not in seen:
                chosen.append(text)
                seen.add(text)
                break
    rng.shuffle(chosen)
    return chosen
