"""The stream of training batches: data files → seeded samplers → this process's shard → tensors.

Contrastive batches draw all their queries from one file (in-batch negatives from the same task); generative
batches pool all files. Both samplers are seeded from ``config.seed`` and resume from their ``state_dict``; the
hard negatives of an example depend only on (seed, epoch, file, index), so a resumed or sharded run builds the
same groups. Texts cut at their max length are counted and reported, never cut silently.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from grit.formats import PromptFormat

from .collate import EmbeddingBatch, GenerativeBatch, collate_embedding, collate_generative
from .config import TrainConfig
from .data import (
    BatchSampler,
    Dataset,
    add_default_instructions,
    drop_short_answers,
    embedding_groups,
    generative_examples,
    read_embedding_files,
    read_generative_files,
)
from .distributed import Dist, shard

log = logging.getLogger(__name__)


class Batches:
    """Endless embedding and/or generative batches for ``config.mode``; each process gets its rows of each."""

    def __init__(self, cfg: TrainConfig, tokenizer, fmt: PromptFormat, d: Dist, pack_width_cost: int = 0):
        """``pack_width_cost``: the model's ``grit.packing.attention_width``, to pack generative batches when
        ``data.pack`` (embedding batches are packed in the forward pass, after GradCache has chunked them)."""
        self.cfg, self.tokenizer, self.fmt, self.d = cfg, tokenizer, fmt, d
        self.pack_width_cost = pack_width_cost if cfg.data.pack else 0
        data = cfg.data
        self.samplers: dict[str, BatchSampler] = {}
        self.embedding_sets: list[Dataset] = []
        self.generative_sets: list[Dataset] = []
        if cfg.mode != "generative":
            self.embedding_sets = read_embedding_files(data.embedding_files, data.skip_bad_lines, data.exclude_heldout)
            for path, dataset in zip(data.embedding_files, self.embedding_sets, strict=True):
                add_default_instructions([dataset], *data.instructions_for(path))
            self.samplers["embedding"] = self.sampler("embedding", self.embedding_sets, same_dataset=True)
        if cfg.mode != "embedding":
            self.generative_sets = read_generative_files(
                data.generative_files, data.skip_bad_lines, data.exclude_heldout
            )
            drop_short_answers(self.generative_sets, data.min_answer_words)
            self.samplers["generative"] = self.sampler("generative", self.generative_sets, same_dataset=False)
        self.warned: set[str] = set()

    def sampler(self, kind: str, datasets: list[Dataset], same_dataset: bool) -> BatchSampler:
        size = getattr(self.cfg.data, f"{kind}_batch_size")
        if size % self.d.world:
            raise ValueError(
                f"data.{kind}_batch_size={size} is the batch over all processes and must split evenly over "
                f"{self.d.world} processes"
            )
        weights = self.cfg.data.weights_for(kind)
        return BatchSampler([len(x) for x in datasets], size, self.cfg.seed, same_dataset, weights)

    def examples(self) -> dict[str, int]:
        """How many examples of each kind this run reads: contrastive groups, chats and cache-aware RAG rows."""
        generative = [ex for dataset in self.generative_sets for ex in dataset.examples]
        rag = sum(1 for ex in generative if ex.passages)
        contrastive = sum(len(dataset) for dataset in self.embedding_sets)
        return {"contrastive": contrastive, "chat": len(generative) - rag, "cached_rag": rag}

    def batches_per_epoch(self) -> int:
        """Batches in one pass over the data that defines an epoch (the embedding data, unless mode is generative)."""
        return len(self.samplers["generative" if self.cfg.mode == "generative" else "embedding"])

    def next(self) -> tuple[EmbeddingBatch | None, GenerativeBatch | None]:
        """The next micro-batch of each kind the mode trains (None for the other), on this process's device."""
        emb = self.next_embedding().to(self.d.device) if "embedding" in self.samplers else None
        gen = self.next_generative().to(self.d.device) if "generative" in self.samplers else None
        return emb, gen

    def next_embedding(self) -> EmbeddingBatch:
        data = self.cfg.data
        batch = next(self.samplers["embedding"])
        batch = dataclasses.replace(batch, items=shard(batch.items, self.d, "data.embedding_batch_size"))
        groups = embedding_groups(
            self.embedding_sets, batch, data.num_hard_negatives, self.cfg.seed, data.negatives_from_other_rows
        )
        out = collate_embedding(self.tokenizer, groups, self.fmt, data.query_max_length, data.passage_max_length)
        self.warn_truncated("embedding", out.truncated, "query_max_length / data.passage_max_length")
        return out

    def next_generative(self) -> GenerativeBatch:
        batch = next(self.samplers["generative"])
        batch = dataclasses.replace(batch, items=shard(batch.items, self.d, "data.generative_batch_size"))
        data = self.cfg.data
        examples = generative_examples(
            self.generative_sets, batch, self.cfg.seed, data.rag_passages, data.rag_cache_attention
        )
        out = collate_generative(self.tokenizer, examples, self.fmt, data.generative_max_length,
                                 self.pack_width_cost, data.passage_max_length)  # fmt: skip
        self.warn_truncated("generative", out.truncated, "generative_max_length")
        return out

    def warn_truncated(self, kind: str, n: int, option: str) -> None:
        """Once per kind; the trainer counts cut texts per step in log.jsonl."""
        if n and kind not in self.warned:
            self.warned.add(kind)
            log.warning("%s texts are being cut at data.%s; log.jsonl counts them (truncated)", kind, option)

    def state_dict(self) -> dict[str, Any]:
        return {kind: sampler.state_dict() for kind, sampler in self.samplers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for kind, sampler in self.samplers.items():
            sampler.load_state_dict(state[kind])
