"""Turn examples into tensors: embedding groups → token ids with text masks; conversations → ids and labels.

Embedding inputs go through ``grit.embedding.tokenize`` (the same function ``GritModel.encode`` uses), so training
sees exactly the tokens inference sees and the instruction is left out of pooling the same way.

Generative inputs use ``grit.generation.chat_prompt``, the prompt the model gets at inference. Labels are the token
ids on assistant turns and -100 (ignored by the loss) everywhere else: system prompt, user turns, the chat format
around them, and padding. The assistant's end-of-turn marker (``<|im_end|>``, ``</s>``) is trained, so the model
learns to stop.

Assistant spans are found by rendering the conversation prefix by prefix: the generation prompt for the history
before assistant turn k ends where the turn's text begins, and the history rendered through turn k ends where it
stops. Character spans are then mapped to tokens by their offsets. This works for any chat template that renders
a conversation as the concatenation of its turns, and fails loudly for one that does not (for example a template
that drops the reasoning of earlier turns).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from grit.embedding import EmbeddingInput, pad_batch, tokenize
from grit.formats import Message, PromptFormat, as_messages
from grit.generation import chat_prompt
from grit.packing import pack_batch

from .data import EmbeddingGroup, GenerativeExample, Text
from .losses import IGNORE

log = logging.getLogger(__name__)


class TensorBatch:
    """``to(device)`` for a dataclass of tensors (ints are kept)."""

    def to(self, device: torch.device | str):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, value.to(device))
        return self


@dataclass
class EmbeddingBatch(TensorBatch):
    """B queries and their B*G passages (G = group_size; rows i*G .. i*G+G-1 belong to query i, the first is its
    positive). For each: ids, padding mask (1 = real token) and text mask (1 = pooled), all right-padded."""

    query_ids: torch.Tensor  # (B, Tq)
    query_padding: torch.Tensor  # (B, Tq)
    query_text: torch.Tensor  # (B, Tq)
    passage_ids: torch.Tensor  # (B*G, Tp)
    passage_padding: torch.Tensor  # (B*G, Tp)
    passage_text: torch.Tensor  # (B*G, Tp)
    group_size: int
    truncated: int  # queries and passages cut at their max length; the trainer sums and reports them
    passage_keys: torch.Tensor | None = None  # (B*G,) int64 fingerprint of each passage: equal texts, equal keys


@dataclass
class GenerativeBatch(TensorBatch):
    """Conversations, right-padded one per row or packed several per row; ``labels`` equal ``input_ids`` on trained
    tokens and -100 elsewhere (packed: also on each conversation's first token, which nothing before it predicts)."""

    input_ids: torch.Tensor  # (R, T)
    attention_mask: torch.Tensor  # (R, T) 1 = a real token
    labels: torch.Tensor  # (R, T)
    truncated: int  # conversations cut at max_length
    sequences: int  # conversations (rows, unless packed)
    positions: torch.Tensor | None = None  # (R, T) packed: each conversation's positions from 0
    segments: torch.Tensor | None = None  # (R, T) packed: conversation number from 1, padding 0
    blocks: torch.Tensor | None = None  # (R, T) cache-aware rows' documents (grit.packing.allowed_attention)


# --- embedding ---------------------------------------------------------------------------------------------------


def tokenize_texts(tokenizer, texts: Sequence[Text], fmt: PromptFormat, max_length: int) -> list[EmbeddingInput]:
    """(instruction, text) pairs → tokenized inputs in the same order. ``tokenize`` takes one prefix per call, so
    texts are grouped by instruction."""
    by_prefix: dict[str, list[int]] = {}
    for row, (instruction, _) in enumerate(texts):
        by_prefix.setdefault(fmt.embed_prefix(instruction), []).append(row)
    out: list[EmbeddingInput | None] = [None] * len(texts)
    for prefix, rows in by_prefix.items():
        try:
            items = tokenize(tokenizer, [texts[r][1] for r in rows], prefix, max_length)
        except ValueError as e:
            raise ValueError(f"{e} (instruction {texts[rows[0]][0]!r:.100})") from None
        for r, item in zip(rows, items, strict=True):
            out[r] = item
    return out


def collate_embedding(
    tokenizer,
    groups: Sequence[EmbeddingGroup],
    fmt: PromptFormat,
    query_max_length: int,
    passage_max_length: int,
) -> EmbeddingBatch:
    """Tokenize B groups of one query and G passages each (every group must have the same G)."""
    if not groups:
        raise ValueError("an embedding batch needs at least one group")
    group_size = len(groups[0].passages)
    if any(len(g.passages) != group_size for g in groups):
        raise ValueError(f"all groups must have {group_size} passages, got {[len(g.passages) for g in groups]}")
    queries = tokenize_texts(tokenizer, [g.query for g in groups], fmt, query_max_length)
    passages = tokenize_texts(tokenizer, [p for g in groups for p in g.passages], fmt, passage_max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cpu = torch.device("cpu")
    return EmbeddingBatch(
        *pad_batch(queries, pad_id, cpu),
        *pad_batch(passages, pad_id, cpu),
        group_size=group_size,
        truncated=sum(x.truncated for x in queries + passages),
        passage_keys=torch.tensor([text_key(p) for g in groups for p in g.passages], dtype=torch.long),
    )


def text_key(text: Text) -> int:
    """A fingerprint of an (instruction, text) pair that every process computes alike (``hash`` of a str differs
    between processes), so copies of a passage can be found in a batch gathered across processes."""
    digest = hashlib.blake2b("\x00".join(text).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


# --- generation --------------------------------------------------------------------------------------------------


def assistant_spans(tokenizer, messages: Sequence[Message], fmt: PromptFormat) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans (start, end) of its assistant turns.

    A span runs from the end of the generation prompt to the end of the turn's end-of-turn marker; whitespace the
    template puts after the marker (ChatML's ``\\n``) is left out, since generation stops at the marker.
    """
    messages = as_messages(messages)
    full = chat_prompt(tokenizer, messages, fmt, add_generation_prompt=False)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = chat_prompt(tokenizer, messages[:k], fmt)  # history + generation prompt: what inference feeds
        # history + this turn + its end-of-turn marker
        through = chat_prompt(tokenizer, messages[: k + 1], fmt, add_generation_prompt=False)
        for name, prefix in (("generation prompt", before), ("rendered history", through)):
            if not full.startswith(prefix):
                raise ValueError(
                    f"the chat format does not render turn {k} as a prefix of the whole conversation ({name} "
                    "differs), so assistant tokens cannot be located; use PromptFormat(chat='grit') or a template "
                    "that renders turns by concatenation"
                )
        end = len(through.rstrip())
        if end <= len(before):
            raise ValueError(f"assistant turn {k} renders to no text after its generation prompt")
        spans.append((len(before), end))
    return full, spans


def tokenize_conversation(
    tokenizer, conversation: Sequence[Message] | str, fmt: PromptFormat, max_length: int, before: str = ""
) -> tuple[list[int], list[int], bool]:
    """(ids, labels, truncated) of one conversation, cut to ``max_length`` tokens.

    A chat is rendered with its format tokens (no tokenizer specials added: the template holds them, as in
    ``grit.generation.prompt_ids``), after ``before`` (the newline a RAG prompt has after cached documents, as
    ``GritModel.chat_ids``); a token is trained when it covers any character of an assistant span. A plain string
    gets the tokenizer's special tokens and every token is trained.
    """
    if isinstance(conversation, str):
        ids = tokenizer(conversation, add_special_tokens=True)["input_ids"]
        return ids[:max_length], list(ids[:max_length]), len(ids) > max_length
    text, spans = assistant_spans(tokenizer, conversation, fmt)
    text, spans = before + text, [(a + len(before), b + len(before)) for a, b in spans]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [
        token if end > start and any(start < b and end > a for a, b in spans) else IGNORE
        for token, (start, end) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return ids[:max_length], labels[:max_length], len(ids) > max_length


def tokenize_cached_rag(
    tokenizer, example: GenerativeExample, fmt: PromptFormat, max_length: int, passage_max_length: int
) -> tuple[list[int], list[int], list[int], bool]:
    """(ids, labels, blocks, truncated) of a cache-aware RAG row, laid out as ``RAG`` answers in ``doc`` mode: each
    document as the index embeds it (``<|embed|>\n{document}``, ``grit.embedding.tokenize``, no instruction, as
    ``IndexConfig.document_instruction``) and cut at ``passage_max_length``, then the chat after a newline. Blocks
    number the documents from 1 (negative: computed causally); the chat is block 0. Only the answer is trained."""
    sign = 1 if example.passage_attention == "bidirectional" else -1
    documents = tokenize(tokenizer, example.passages, fmt.embed_prefix(""), passage_max_length)
    ids, labels, blocks = [], [], []
    for k, doc in enumerate(documents):
        ids += doc.ids
        labels += [IGNORE] * len(doc.ids)
        blocks += [sign * (k + 1)] * len(doc.ids)
    tail, tail_labels, cut = tokenize_conversation(tokenizer, example.conversation, fmt, max_length, before="\n")
    cut = cut or any(doc.truncated for doc in documents)
    return ids + tail, labels + tail_labels, blocks + [0] * len(tail), cut


def collate_generative(
    tokenizer,
    examples: Sequence[GenerativeExample],
    fmt: PromptFormat,
    max_length: int,
    pack_width_cost: int = 0,
    passage_max_length: int = 512,
) -> GenerativeBatch:
    """Tokenize B conversations and right-pad them, one per row, or with ``pack_width_cost`` (``grit.packing``'s
    ``attention_width`` of the model) pack them several per row; labels are -100 on padding and on everything but
    assistant turns. Cache-aware RAG rows (``tokenize_cached_rag``) bring their documents as blocks, and the batch
    then has positions, segments and blocks, packed or not."""
    if not examples:
        raise ValueError("a generative batch needs at least one example")
    rows = []
    for ex in examples:
        if ex.passages:
            rows.append(tokenize_cached_rag(tokenizer, ex, fmt, max_length, passage_max_length))
        else:
            ids, labels, cut = tokenize_conversation(tokenizer, ex.conversation, fmt, max_length)
            rows.append((ids, labels, [0] * len(ids), cut))
    cut = sum(c for *_, c in rows)
    with_blocks = any(ex.passages for ex in examples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if pack_width_cost:
        packed = pack_batch([ids for ids, *_ in rows], pad_id, torch.device("cpu"), pack_width_cost)
        labels = packed.lay_out([[IGNORE, *lab[1:]] for _, lab, _, _ in rows], IGNORE)
        attention = (packed.segments > 0).long()
        blocks = packed.lay_out([b for _, _, b, _ in rows], 0) if with_blocks else None
        return GenerativeBatch(packed.ids, attention, labels, cut, len(rows), packed.positions, packed.segments,
                               blocks)  # fmt: skip
    width = max(len(ids) for ids, *_ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    blocks = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, lab, block, _) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention[r, : len(ids)] = 1
        labels[r, : len(ids)] = torch.tensor(lab)
        blocks[r, : len(ids)] = torch.tensor(block)
    if not with_blocks:
        return GenerativeBatch(input_ids, attention, labels, cut, len(rows))
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # one sequence per row, from 0
    return GenerativeBatch(input_ids, attention, labels, cut, len(rows), positions, attention.clone(), blocks)
