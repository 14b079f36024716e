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
* One **decoding thread** owns the batch (``grit.decode_step.KVBatch``): left-padded key/value caches of the active
  sequences in buffers that grow in place, a mask that hides the padding, each sequence's own position. Between
  steps new sequences join (their cache is padded to the batch's width) and finished ones leave (their rows are
  dropped, and columns that only padding used). A step runs ``grit.decode_step.llama_step`` for Llama-family
  models (the model's own modules without transformers' per-token machinery: equal logits; single-stream decode
  1.4-1.6x, 8 rows 1.2x with float16 weights on 2 AVX2 cores, bench/RESULTS.md) and the model's forward for the
  rest.
  The decoder holds the model's gate for one step at a time, so embedding batches and other prefills get the model
  between steps; the step itself runs where the gate runs the model's work (``Gate.run``).
* Each sequence keeps its own sampling settings, stop strings, cancel event and **its own random generator**: a
  seeded answer is drawn from the same numbers whatever else is in the batch, and equals the seeded answer of
  ``grit.generation.complete`` (transformers' order: minimum length, temperature, top-p, softmax, multinomial).
  Greedy answers equal one-at-a-time ones (left padding is masked, positions count real tokens).
* Without a shared model, ``decode_together`` runs the same rows and steps on the caller's thread, for one prompt
  or a batch: ``grit.generation`` decodes ``complete`` and ``complete_batch`` with it when no gate is given.

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

from grit.decode_step import KVBatch, step_for
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


def new_row(lm, tokenizer, ids: torch.Tensor, params: SamplingParams, cancel=None, streamer=None) -> Row:
    """A generation of prompt ``ids`` (1, T): its end tokens, stop strings and own random generator (seeded with
    ``params.seed``, else from the OS); a streamer is sent the prompt first, as ``generate`` sends it."""
    config = generation_config(lm, params, tokenizer)
    generator = torch.Generator(device=ids.device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    stop = StopOnText(tokenizer, params.stop, 0) if params.stop else None
    if streamer is not None:
        streamer.put(ids.cpu())  # a streamer may skip it
    return Row(ids, params, generator, cancel, streamer, stop, token_set(config.eos_token_id))


def first_token(lm, seq: Row, ids: torch.Tensor, cache) -> tuple[object, int]:
    """The cache of all of ``ids`` (1, T) and the first sampled token of ``seq``: the rest of ``ids`` run on top of
    ``cache`` (a prefill of its first tokens, or None)."""
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=lm.config)
    done = cache.get_seq_length()
    if done >= ids.shape[1]:  # everything cached: run the last token again for its logits
        crop_cache(cache, ids.shape[1] - 1)
        done = ids.shape[1] - 1
    positions = torch.arange(done, ids.shape[1], device=ids.device)[None]
    out = lm(input_ids=ids[:, done:], position_ids=positions, use_cache=True, logits_to_keep=1,
             **cache_argument(cache))  # fmt: skip
    return cache, pick(seq, out.logits[0, -1].float())


def pick(seq: Row, logits: torch.Tensor) -> int:
    """The next token of ``seq`` from its float32 logits (V,): its end tokens held back until ``min_new_tokens``."""
    if len(seq.tokens) < seq.params.min_new_tokens and seq.ends:
        logits = logits.clone()
        logits[list(seq.ends)] = -float("inf")
    return sample(logits, seq.params, seq.generator)


def advance(step, lm, tokenizer, rows: list[Row], batch: KVBatch) -> list[int]:
    """One token for every row of ``batch`` (``step``: a ``grit.decode_step`` step function); rows that end are
    finished. Returns the indices of the rows that go on."""
    tokens = torch.tensor([[seq.tokens[-1]] for seq in rows], device=batch.mask.device)
    positions = torch.tensor([[seq.position] for seq in rows], device=batch.mask.device)
    logits = step(lm, batch, tokens, positions)
    keep = []
    for row, seq in enumerate(rows):
        if seq.add(pick(seq, logits[row]), tokenizer):
            seq.finish()
        else:
            keep.append(row)
    return keep


@torch.inference_mode()
def decode_together(lm, tokenizer, prompts: list[torch.Tensor], params: SamplingParams, past_key_values=None,
                    cancel=None, streamer=None, step: str = "auto") -> list[torch.Tensor]:  # fmt: skip
    """Prompts (each (1, T)) decoded as one batch on the calling thread, with no decoding thread and no gate: each
    prefilled alone, then one step a token for all rows still going, a row that ends leaving the batch (transformers'
    batched ``generate`` pads every prompt to the longest and steps finished rows until the last one ends). Each
    result is what ``transformers.generate`` returns for that prompt alone, prompt and new tokens (1, T + new): the
    same greedy tokens, and, as every row draws from its own generator, the same seeded samples. ``past_key_values``
    (the states of a prompt's first tokens, a RAG cache) and ``streamer`` are for a single prompt."""
    if len(prompts) > 1 and (past_key_values is not None or streamer is not None):
        raise ValueError("a cache or a streamer is for one prompt, not a batch")
    if not prompts:
        return []
    step_fn = step_for(lm, step)
    every: list[Row] = []
    rows, parts = [], []
    try:
        for ids in prompts:
            seq = new_row(lm, tokenizer, ids, params, cancel, streamer)
            every.append(seq)
            cache, token = first_token(lm, seq, ids, prefill(lm, ids, past_key_values, None))
            if seq.add(token, tokenizer):
                seq.finish()
            else:
                rows.append(seq)
                parts.append(KVBatch.of_cache(cache))
        batch = KVBatch.stack(parts) if parts else None
        del parts, cache
        # On the caller's threads, as generate ran: the one-thread rule of grit.hardware is for a decoding thread
        # beside other OpenMP teams (a server). Alone on 2 AVX2 cores, 2 threads decode a stream 1.15x faster than 1.
        while rows:
            keep = advance(step_fn, lm, tokenizer, rows, batch)
            if len(keep) < len(rows):
                rows = [rows[i] for i in keep]
                batch = batch.keep(keep) if keep else None
    except BaseException as e:
        for seq in every:
            seq.finish(e)  # rows already finished keep their result
        raise
    return [seq.future.result() for seq in every]


class ContinuousDecoder:
    """A gate (exclusive use of the model) that also decodes its callers' generations in one shared batch.

    ``gate`` is the model's lock (``grit.serve.scheduler.FairGate``); ``hold`` and ``between_tokens`` pass through
    to it, so everything else that shares the model (embedding batches, prefills) goes through this object too.
    ``max_batch`` caps the sequences decoded at once; more wait, in arrival order, for a row to free up.
    ``step``: which step function runs the batch (``grit.decode_step.step_for``: auto, llama, transformers).
    """

    def __init__(self, lm: torch.nn.Module, tokenizer, gate: Gate, max_batch: int = 32,
                 threads: int | None = None, step: str = "auto") -> None:  # fmt: skip
        reason = unsupported(lm)
        if reason is not None:
            raise ValueError(f"{type(lm).__name__} cannot be decoded in a shared batch: {reason}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.lm, self.tokenizer, self.gate, self.max_batch = lm, tokenizer, gate, max_batch
        self.step_fn = step_for(lm, step)
        on_cpu = next(lm.parameters()).device.type == "cpu"
        # Decoding steps on the CPU run on fewer threads than prefill (grit.hardware's module doc says why), where
        # the gate runs the model's work (a server's model thread).
        self.threads = threads or (decode_threads(torch.get_num_threads()) if on_cpu else 0)
        self._joining: deque[tuple[Row, object]] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._rows: list[Row] = []
        self._batch: KVBatch | None = None  # the rows' caches, left-padded
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
        seq = new_row(self.lm, self.tokenizer, ids, params, cancel, streamer)
        began = time.perf_counter()
        try:
            with self.gate.hold(), torch.inference_mode():
                # Chunks offer the gate between them, here; the rest runs where the gate runs the model's work.
                cache = prefill(self.lm, ids, past_key_values, self.gate)
                cache, token = self.gate.run(first_token, self.lm, seq, ids, cache)
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
                self._rows, self._batch = [], None
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
        parts = ([] if self._batch is None else [self._batch]) + [KVBatch.of_cache(cache) for _, cache in joins]
        self._batch = KVBatch.stack(parts)
        self._rows += [seq for seq, _ in joins]

    def _step(self) -> None:
        """One token for every row; rows that finish leave the batch."""
        rows = self._rows
        if not rows:
            return
        keep = advance(self.step_fn, self.lm, self.tokenizer, rows, self._batch)
        self.steps += 1
        self.batch_sizes = (self.batch_sizes + [len(rows)])[-1000:]
        if self.on_step is not None:
            self.on_step(len(rows))
        if len(keep) < len(rows):
            self._drop(keep)

    def _drop(self, keep: list[int]) -> None:
        """Keep only rows ``keep``, and only the columns some kept row uses."""
        if not keep:
            self._rows, self._batch = [], None
            return
        self._batch = self._batch.keep(keep)
        self._rows = [self._rows[i] for i in keep]


OPEN: weakref.WeakSet[ContinuousDecoder] = weakref.WeakSet()


@atexit.register
def close_all() -> None:
    """A decoding thread still waiting when the interpreter exits aborts it ("terminate called without an active
    exception", from torch's thread pools): every open decoder is closed first."""
    for decoder in list(OPEN):
        decoder.close()
