"""Run the ``mteb`` benchmark on a GritModel (or any ``Encoder``), with GritLM's instruction for each task.

mteb is not a dependency of grit: it is imported only when mteb itself asks for the model's metadata or a
similarity. ``encode`` takes both calling conventions:

    mteb 2.x   encode(inputs: DataLoader of {"text": [...]}, *, task_metadata, hf_split, hf_subset, prompt_type)
    mteb 1.x   encode(sentences: list[str], *, task_name, prompt_type)

Example:
    >>> import mteb
    >>> model = MtebEncoder(GritModel.load())
    >>> mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark"]), cache=None)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from grit import instructions
from grit.eval.encoders import model_name

log = logging.getLogger(__name__)

RETRIEVAL_TYPES = ("Retrieval", "InstructionRetrieval")  # documents get no instruction (GritLM); others are symmetric


def prompt_side(prompt_type: Any) -> str:
    """mteb's PromptType (an enum with .value "query" / "document") or a plain string, as our "query" / "corpus"."""
    value = getattr(prompt_type, "value", prompt_type)
    return "corpus" if value in ("document", "passage", "corpus") else "query"


class MtebEncoder:
    """mteb's encoder protocol around an object with ``encode(texts, instruction=...)``.

    Instructions come from ``instructions`` by mteb task name (GritLM's e5 set by default); for a task not listed
    there the task's own ``metadata.prompt`` is used, and retrieval documents stay uninstructed.
    """

    def __init__(self, model: Any, name: str | None = None, instructions: Mapping[str, Any] = instructions.GRITLM_E5):
        self.model = model
        self.name = name or f"grit/{model_name(model)}"
        self.instructions = dict(instructions)
        self._warned: set[str] = set()

    @property
    def mteb_model_meta(self) -> Any:
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        return ModelMeta.create_empty(
            {
                "name": self.name if "/" in self.name else f"grit/{self.name}",
                "revision": "local",
                "embed_dim": getattr(self.model, "dim", None),
                "similarity_fn_name": ScoringFunction.COSINE,
                "use_instructions": True,
                "framework": ["PyTorch"],
            }
        )

    def instruction(self, task_name: str | None, prompt_type: Any = None, metadata: Any = None) -> str:
        """The instruction for one side of one task; "" for retrieval documents unless the table says otherwise."""
        side = prompt_side(prompt_type)
        if task_name in self.instructions:
            return instructions.side(self.instructions[task_name], side)
        if task_name not in self._warned:
            self._warned.add(task_name)
            log.warning("no GritLM instruction for mteb task %r; using the task's own prompt", task_name)
        prompt = getattr(metadata, "prompt", None)
        if isinstance(prompt, dict):
            return prompt.get("document" if side == "corpus" else "query") or ""
        if side == "corpus" and getattr(metadata, "type", None) in RETRIEVAL_TYPES:
            return ""
        return prompt if isinstance(prompt, str) else ""

    def encode(
        self,
        inputs: Iterable[Any],
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        task_name: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embeddings ``(n, dim)`` float32 of every text in ``inputs`` (a list of strings or batches of
        ``{"text": [...]}``), with the instruction for this task and side. Other mteb kwargs are ignored."""
        texts: list[str] = []
        for item in inputs:
            texts.extend([item] if isinstance(item, str) else item["text"])
        name = getattr(task_metadata, "name", None) or task_name
        instruction = self.instruction(name, prompt_type, task_metadata)
        log.info("mteb %s (%s): %d texts, instruction %r", name, prompt_side(prompt_type), len(texts), instruction)
        if not texts:
            return np.zeros((0, getattr(self.model, "dim", 0)), dtype=np.float32)
        return np.asarray(self.model.encode(texts, instruction=instruction), dtype=np.float32)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)
