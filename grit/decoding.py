"""Continuous batching: the generations of many callers decoded together, one forward pass per step for all.

A decoding step of a small model reads every weight once whatever the batch, so on a CPU (bound by memory and by
per-layer overhead, not by arithmetic) a step for eight sequences costs little more than a step for one. A server
that advances its chats in turn, one token each, pays one step per chat per token; this module pays one step per
token for all of them, as vLLM's and llama.cpp's servers do.

How it runs:

* A caller **prefills** its prompt under the gate (in chunks that offer the model between them, as
  ``grit.generation.prefill`` does, on top of a RAG cache when there is one; the forward passes run where the gate
  runs the model's work, ``Gate.run``), samples the first token and hands the sequence to the decoder. Prefill is
  not batched: on a CPU it is bound by arithmetic already, and chunks of one prompt interleave with the others'
  decoding steps instead of stalling them for the whole prompt.
* One **decoding thread** owns the batch: left-padded key/value caches of the active sequences, an attention mask
  that hides the padding, each sequence's own position. Between steps new sequences join (their cache is padded to
  the batch's width) and finished ones leave (their rows are dropped, and columns that only padding used).
  The decoder holds the model's gate for one step at a time, so embedding batches and other prefills get the model
  between steps; the step itself runs where the gate runs the model's work (``Gate.run``).
* Each sequence keeps its own sampling settings, stop strings, cancel event and **its own random generator**: a
  seeded answer is drawn from the same numbers whatever else is in the batch, and equals the seeded answer of
  ``grit.generation.complete`` (transformers' order: minimum length, temperature, top-p, softmax, multinomial).
  Greedy answers equal one-at-a-time ones (left padding is masked, positions count real tokens).

Models whose caches are not plain per-layer key/value tensors (sliding-window or recurrent layers) and generation
settings transformers would add processors for (repetition penalty and the like) are decoded one request at a
time by ``transformers.generate`` instead (``unsupported``).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from grit.generation import Gate, SamplingParams, StopOnText, generation_config, prefill, token_set
from grit.hardware import decode_threads, torch_threads
from grit.transformers_compat import cache_argument, crop_cache

log = logging.getLogger(__name__)

# Generation settings for which transformers adds a logits processor that this decoder does not apply.
PROCESSOR_SETTINGS = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "typical_p": 1.0, "min_p": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "sequence_bias": None, "renormalize_logits": False, "num_beams": 1, "exponential_decay_length_penalty": None,
}  # fmt: skip


def unsupported(lm: torch.nn.Module) -> str | None:
    """Why this model cannot be decoded in a shared batch, or None when it can."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=lm.config)
    kinds = {type(layer).__name__ for layer in cache.layers}
    if not cache.layers or kinds != {DynamicLayer.__name__}:
        return f"its cache layers are {', '.join(sorted(kinds)) or 'none'}, not plain key/value layers"
    config = lm.generation_config
    for name, neutral in PROCESSOR_SETTINGS.items():
        value = getattr(config, name, neutral)
        if value is not None and value != neutral:
            return f"its generation config sets {name}={value!r}"
    return None


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The next token from one row's float32 logits (V,), as transformers' sampling draws it: temperature, then
    top-p (the smallest set of tokens whose probability reaches top_p, at least one), softmax, one multinomial draw
    from ``generator``. Greedy (temperature 0) is the argmax."""
    if params.temperature <= 0:
        return int(logits.argmax())
    scores = logits / params.temperature
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - params.top_p
        drop[-1] = False  # keep at least the most likely token
        scores = scores.masked_fill(drop.scatter(0, order, drop), -float("inf"))
    probs = scores.softmax(dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


@dataclass
class Row:
    """One caller's generation inside the decoder."""

    prompt: torch.Tensor  # (1, T) ids
    params: SamplingParams
    generator: torch.Generator | None
    cancel: threading.Event | None
    streamer: object | None  # transformers' streamer protocol: put(tensor), end()
    stop: StopOnText | None
    ends: set[int]
    tokens: list[int] = field(default_factory=list)
    future: Future = field(default_factory=Future)

    @property
    def position(self) -> int:
        """Position of the newest token (the next step's input)."""
        return self.prompt.shape[1] + len(self.tokens) - 1

    def add(self, token: int, tokenizer) -> bool:
        """Append a sampled token; True when the sequence is done."""
        self.tokens.append(token)
        if self.streamer is not None:
            self.streamer.put(torch.tensor([token]))
        if token in self.ends or len(self.tokens) >= self.params.max_new_tokens:
            return True
        if self.stop is not None and self.stop.found(self.tokens):
            return True
        return self.cancel is not None and self.cancel.is_set()

    def finish(self, error: BaseException | None = None) -> None:
        if self.future.done():
            return
        if self.streamer is not None:
            self.streamer.end()
        if error is not None:
            self.future.set_exception(error)
        else:
            new = torch.tensor([self.tokens], dtype=self.prompt.dtype, device=self.prompt.device)
            self.future.set_result(torch.cat([self.prompt, new], dim=1))


class ContinuousDecoder:
    """A gate (exclusive use of the model) that also decodes its callers' generations in one shared batch.

    ``gate`` is the model's lock (``grit.serve.scheduler.FairGate``); ``hold`` and ``between_tokens`` pass through
    to it, so everything else that shares the model (embedding batches, prefills) goes through this object too.
    ``max_batch`` caps the sequences decoded at once; more wait, in arrival order, for a row to free up.
    """

    def __init__(self, lm: torch.nn.Module, tokenizer, gate: Gate, max_batch: int = 32,
                 threads: int | None = None) -> None:  # fmt: skip
        reason = unsupported(lm)
        if reason is not None:
            raise ValueError(f"{type(lm).__name__} cannot be decoded in a shared batch: {reason}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.lm, self.tokenizer, self.gate, self.max_batch = lm, tokenizer, gate, max_batch
        self.device = next(lm.parameters()).device
        # Decoding steps on the CPU run on fewer threads than prefill (grit.hardware's module doc says why), where
        # the gate runs the model's work (a server's model thread).
        self.threads = threads or (decode_threads(torch.get_num_threads()) if self.device.type == "cpu" else 0)
        self._joining: deque[tuple[Row, object]] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._rows: list[Row] = []
        self._cache = None  # DynamicCache (B, heads, L, head_dim) per layer, left-padded
        self._mask: torch.Tensor | None = None  # (B, L) 1 where a cached column is a real token of that row
        self.steps = 0  # decoding steps run (tests and metrics read these)
        self.batch_sizes: list[int] = []  # rows in each step, the last 1,000
        self.on_step: Callable[[int], None] | None = None  # called with each step's batch size (metrics)
        self.on_first_token: Callable[[float], None] | None = None  # seconds from start() to the first token
        self._thread = threading.Thread(target=self._loop, name="grit-decode", daemon=True)
        self._thread.start()
        OPEN.add(self)

    # The gate's side: what the rest of the server holds the model with.
    def hold(self) -> AbstractContextManager:
        return self.gate.hold()

    def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        return self.gate.run(fn, *args, **kwargs)

    def between_tokens(self) -> None:
        self.gate.between_tokens()

    @property
    def waiting(self) -> int:
        return getattr(self.gate, "waiting", 0)

    @property
    def busy_s(self) -> float:
        return getattr(self.gate, "busy_s", 0.0)

    @property
    def active(self) -> int:
        """Sequences being decoded or waiting to join."""
        with self._wake:
            return len(self._rows) + len(self._joining)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        OPEN.discard(self)

    def start(self, ids: torch.Tensor, params: SamplingParams, past_key_values=None, cancel=None, streamer=None):
        """Prefill ``ids`` (1, T) for the caller, under the gate (on top of ``past_key_values``, which may hold the
        states of its first tokens), and hand the sequence to the decoding thread. Returns a future of the prompt and
        the generated tokens (1, T + new), as ``transformers.generate`` returns them."""
        config = generation_config(self.lm, params, self.tokenizer)
        ends = token_set(config.eos_token_id)
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        stop = StopOnText(self.tokenizer, params.stop, 0) if params.stop else None
        seq = Row(ids, params, generator, cancel, streamer, stop, ends)
        if streamer is not None:
            streamer.put(ids.cpu())  # the prompt, as generate sends it first (a streamer may skip it)
        began = time.perf_counter()
        try:
            with self.gate.hold(), torch.inference_mode():
                # Chunks offer the gate between them, here; the rest runs where the gate runs the model's work.
                cache = prefill(self.lm, ids, past_key_values, self.gate)
                cache, token = self.gate.run(self._first_token, seq, ids, cache)
            done = seq.add(token, self.tokenizer)
        except BaseException as e:
            seq.finish(e)
            raise
        if self.on_first_token is not None:
            self.on_first_token(time.perf_counter() - began)
        if done:
            seq.finish()
            return seq.future
        with self._wake:
            if self._closed:
                seq.finish(RuntimeError("the decoder is closed"))
                return seq.future
            self._joining.append((seq, cache))
            self._wake.notify_all()
        return seq.future

    def generate(self, ids, params, past_key_values=None, cancel=None, streamer=None) -> torch.Tensor:
        return self.start(ids, params, past_key_values, cancel, streamer).result()

    def _first_token(self, seq: Row, ids: torch.Tensor, cache) -> tuple[object, int]:
        """The cache of all of ``ids`` (1, T) and the first sampled token of ``seq``: the rest of ``ids`` run on top
        of ``cache`` (a prefill of its first tokens, or None). The argmax over the vocabulary is a parallel
        reduction, so it runs here too, not in the caller's thread."""
        from transformers import DynamicCache

        if cache is None:
            cache = DynamicCache(config=self.lm.config)
        done = cache.get_seq_length()
        if done >= ids.shape[1]:  # everything cached: run the last token again for its logits
            crop_cache(cache, ids.shape[1] - 1)
            done = ids.shape[1] - 1
        positions = torch.arange(done, ids.shape[1], device=ids.device)[None]
        out = self.lm(input_ids=ids[:, done:], position_ids=positions, use_cache=True, logits_to_keep=1,
                      **cache_argument(cache))  # fmt: skip
        return cache, self._pick(seq, out.logits[0, -1].float())

    def _pick(self, seq: Row, logits: torch.Tensor) -> int:
        if len(seq.tokens) < seq.params.min_new_tokens and seq.ends:
            logits = logits.clone()
            logits[list(seq.ends)] = -float("inf")
        return sample(logits, seq.params, seq.generator)

    # The decoding thread's side.
    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or self._rows or self._joining)
                if self._closed:
                    joining = [seq for seq, _ in self._joining]
                    self._joining.clear()
                    break
                free = self.max_batch - len(self._rows)
                joins = [self._joining.popleft() for _ in range(min(free, len(self._joining)))]
            try:
                with self.gate.hold():
                    self.gate.run(self._advance, joins)
            except Exception as e:  # a fault in the model: every sequence in the batch gets it
                log.exception("decoding step of %d sequences failed", len(self._rows))
                for seq in self._rows:
                    seq.finish(e)
                self._rows, self._cache, self._mask = [], None, None
        for seq in self._rows + joining:
            seq.finish(RuntimeError("the decoder was closed"))

    def _advance(self, joins: list[tuple[Row, object]]) -> None:
        """One decoding step, with the joining sequences in the batch."""
        with torch.inference_mode(), torch_threads(self.threads) if self.threads else nullcontext():
            self._merge(joins)
            self._step()

    def _merge(self, joins: list[tuple[Row, object]]) -> None:
        """Add the joining sequences' caches to the batch, every cache left-padded to the widest."""
        if not joins:
            return
        from transformers import DynamicCache

        parts = ([] if self._cache is None else [(self._cache, self._mask)]) + [
            (cache, torch.ones((1, cache.get_seq_length()), dtype=torch.long, device=self.device))
            for _, cache in joins
        ]
        width = max(mask.shape[1] for _, mask in parts)
        layers = []
        for i in range(len(parts[0][0].layers)):
            keys = [pad_left(cache.layers[i].keys, width) for cache, _ in parts]
            values = [pad_left(cache.layers[i].values, width) for cache, _ in parts]
            layers.append((torch.cat(keys), torch.cat(values)))
        masks = [torch.nn.functional.pad(mask, (width - mask.shape[1], 0)) for _, mask in parts]
        self._cache = DynamicCache(layers, config=self.lm.config)
        self._mask = torch.cat(masks)
        self._rows += [seq for seq, _ in joins]

    def _step(self) -> None:
        """One token for every row; rows that finish leave the batch."""
        rows = self._rows
        if not rows:
            return
        tokens = torch.tensor([[seq.tokens[-1]] for seq in rows], device=self.device)
        positions = torch.tensor([[seq.position] for seq in rows], device=self.device)
        mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=self._mask.dtype, device=self.device)], 1)
        out = self.lm(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                      **cache_argument(self._cache))  # fmt: skip
        self._mask = mask
        logits = out.logits[:, -1].float()
        self.steps += 1
        self.batch_sizes = (self.batch_sizes + [len(rows)])[-1000:]
        if self.on_step is not None:
            self.on_step(len(rows))
        keep = []
        for row, seq in enumerate(rows):
            if seq.add(self._pick(seq, logits[row]), self.tokenizer):
                seq.finish()
            else:
                keep.append(row)
        if len(keep) < len(rows):
            self._drop(keep)

    def _drop(self, keep: list[int]) -> None:
        """Keep only rows ``keep``, and only the columns some kept row uses."""
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        from transformers import DynamicCache

        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        first = int(mask.any(0).nonzero()[0])  # columns before it are padding in every kept row
        layers = [(layer.keys[index, :, first:], layer.values[index, :, first:]) for layer in self._cache.layers]
        self._cache = DynamicCache(layers, config=self.lm.config)
        self._mask = mask[:, first:]
        self._rows = [self._rows[i] for i in keep]


OPEN: weakref.WeakSet[ContinuousDecoder] = weakref.WeakSet()


@atexit.register
def close_all() -> None:
    """A decoding thread still waiting when the interpreter exits aborts it ("terminate called without an active
    exception", from torch's thread pools): every open decoder is closed first."""
    for decoder in list(OPEN):
        decoder.close()


def pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """(B, heads, L, head_dim) → (B, heads, width, head_dim) with zeros in front (masked: never attended to)."""
    return torch.nn.functional.pad(states, (0, 0, width - states.shape[2], 0))
