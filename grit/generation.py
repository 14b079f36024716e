"""Text generation with causal attention: chat formatting, sampling settings, stop strings, streaming, cancelling.

Decoding is transformers' ``generate`` for padded batches, and grit's own loop (``grit.decoding``) for one prompt
(greedy output equals plain transformers token for token either way, and a seeded draw is the same draw); this
module adds what a user of an API expects around it: stop strings cut from the text, a stream of text pieces that
never shows part of a stop string, a ``threading.Event`` that stops generation (a client that went away), token
counts and the reason generation ended, and an optional *gate*: an object that owns the model while several
requests share it (a server), held for the whole generation and offered to waiting work after every token.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from grit.formats import Message, PromptFormat
from grit.transformers_compat import cache_argument

log = logging.getLogger(__name__)


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # the range torch.manual_seed accepts


@dataclass
class SamplingParams:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    min_new_tokens: int = 0  # the end token is suppressed until then (fixed-length runs for latency benchmarks)

    def __post_init__(self) -> None:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise TypeError(f"stop must be a string or a list of strings, got {self.stop!r:.80}")
        self.stop = [s for s in stops if s]
        for name in ("max_new_tokens", "min_new_tokens"):  # bool is an int to Python, not a token count to a user
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be a whole number, got {value!r:.40}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise TypeError(f"seed must be a whole number or None, got {self.seed!r:.40}")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be in [{SEED_MIN}, {SEED_MAX}] (torch.manual_seed's range), got {self.seed}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number, got {value!r:.40}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    """What one generation produced. ``finish_reason`` follows the OpenAI API: "stop" when the model's end token or
    a stop string ended it, "length" when ``max_new_tokens`` did, "cancelled" when the caller's event did."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length", "cancelled", ""] = ""


@dataclass
class Stream:
    """A generation being streamed: iterate ``pieces`` for the text as it is decoded (closing it early stops the
    model); ``result`` holds the whole text, token counts and finish reason once ``pieces`` is exhausted."""

    pieces: Iterator[str]
    result: Generation


class Gate(Protocol):
    """Exclusive use of the model (see ``grit.serve.scheduler.FairGate``)."""

    def hold(self) -> AbstractContextManager: ...

    def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` for the holder (a forward pass), where the gate runs the model's work."""
        ...

    def between_tokens(self) -> None: ...


def run_under(gate: Gate | None, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` through ``gate.run`` when there is a gate, else here."""
    return fn(*args, **kwargs) if gate is None else gate.run(fn, *args, **kwargs)


@runtime_checkable
class DecodingGate(Gate, Protocol):
    """A gate that also decodes its callers' generations in one shared batch (``grit.decoding.ContinuousDecoder``):
    ``start`` prefills in the caller's thread and returns a future of prompt + generated ids (1, T + new)."""

    def start(self, ids: torch.Tensor, params: SamplingParams, past_key_values=None, cancel=None,
              streamer=None) -> Future: ...  # fmt: skip


class StopOnEvent(StoppingCriteria):
    """Ends generation when the event is set (by a stop string seen in the stream, or a caller that gave up)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class StopOnText(StoppingCriteria):
    """Ends a row once its generated text holds one of the stop strings. Each step decodes only the row's last few
    tokens (a token decodes to at least one character, so a stop string of n characters lies within its last n + a
    few tokens): the cost follows the stop strings' length and nothing else. transformers' own ``stop_strings``
    builds a vocabulary-by-length table for every set of strings instead (seconds and GBs for long strings, kept in a
    cache across requests), which is why grit does not use it."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.start = tokenizer, list(stops), prompt_width
        self.window = max(len(s) for s in self.stops) + 8  # + tokens that decode to nothing (special ones)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.window) :]
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        found = [any(s in text for s in self.stops) for text in texts]
        return torch.tensor(found, dtype=torch.bool, device=input_ids.device)

    def found(self, generated: Sequence[int]) -> bool:
        """Whether one sequence's generated tokens hold a stop string (the same test, for one list of tokens)."""
        text = self.tokenizer.decode(generated[-self.window :], skip_special_tokens=True)
        return any(s in text for s in self.stops)


class OfferGate(StoppingCriteria):
    """Never stops anything: after each token it lets the gate hand the model to waiting work (an embedding batch,
    another request's next token) before generation goes on."""

    def __init__(self, gate: Gate):
        self.gate = gate

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.gate.between_tokens()
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


def chat_prompt(tokenizer, messages: Sequence[Message], fmt: PromptFormat, add_generation_prompt: bool = True) -> str:
    """``messages`` rendered with the tokenizer's chat template, or GritLM's format; with the assistant's opening
    at the end when ``add_generation_prompt`` (inference), without it for a whole conversation (training)."""
    use_template = fmt.chat == "template" or (fmt.chat == "auto" and getattr(tokenizer, "chat_template", None))
    if use_template:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    return fmt.grit_chat(messages, add_generation_prompt, eos=tokenizer.eos_token or "</s>")


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def generation_config(model, params: SamplingParams, tokenizer) -> GenerationConfig:
    config = GenerationConfig.from_dict(model.generation_config.to_dict())
    config.max_new_tokens = params.max_new_tokens
    config.min_new_tokens = params.min_new_tokens or None
    config.do_sample = params.temperature > 0
    # Greedy must not carry sampling settings (transformers warns about them), sampling gets exactly ours.
    config.temperature = params.temperature if config.do_sample else None
    config.top_p = params.top_p if config.do_sample else None
    config.top_k = 0 if config.do_sample else None  # None would be transformers' default of 50: no top-k at all
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return config


def prompt_ids(tokenizer, prompt: str, max_new_tokens: int, context: int, device: torch.device) -> torch.Tensor:
    # The chat template already holds the special tokens (BOS etc.), so none are added again.
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if ids.shape[1] + max_new_tokens > context:
        raise ValueError(
            f"prompt is {ids.shape[1]} tokens; with max_new_tokens={max_new_tokens} that exceeds the model's "
            f"context of {context} tokens"
        )
    return ids.to(device)


def run_generate(
    model,
    tokenizer,
    ids: torch.Tensor,
    params: SamplingParams,
    streamer=None,
    cancel=None,
    past_key_values=None,
    gate: Gate | None = None,
    attention_mask: torch.Tensor | None = None,
):
    """transformers' generate on ``ids`` (B, T); ``attention_mask`` hides left padding (default: none).
    ``past_key_values`` may already hold the states of the first tokens of ``ids`` (RAG cache reuse); generate then
    runs only the rest through the model. One unpadded prompt is decoded by grit's own loop instead, with the same
    tokens and draws: in a ``DecodingGate``'s shared batch, or, without a gate, on this thread
    (``grit.decoding.decode_together``)."""
    if isinstance(gate, DecodingGate) and attention_mask is None and ids.shape[0] == 1:
        return gate.start(ids, params, past_key_values, cancel, streamer).result()
    if gate is None and attention_mask is None and ids.shape[0] == 1:
        from grit.decoding import decode_together, unsupported  # grit.decoding imports this module

        if unsupported(model) is None:
            return decode_together(model, tokenizer, [ids], params, past_key_values, cancel, streamer)[0]
    criteria = StoppingCriteriaList()
    if params.stop:
        criteria.append(StopOnText(tokenizer, params.stop, ids.shape[1]))
    if cancel is not None:
        criteria.append(StopOnEvent(cancel))
    if gate is not None:
        criteria.append(OfferGate(gate))
    with gate.hold() if gate is not None else nullcontext(), torch.inference_mode():
        if params.seed is not None:  # inside the gate: no other request draws from the generator in between
            torch.manual_seed(params.seed)
        if attention_mask is None and ids.shape[0] == 1:  # one unpadded prompt (a batch is prefilled whole)
            # Under a gate even a short prompt: its passes then run where the gate runs the model's work.
            past_key_values = prefill(model, ids, past_key_values, gate, always=gate is not None)
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids) if attention_mask is None else attention_mask,
            generation_config=generation_config(model, params, tokenizer),
            stopping_criteria=criteria or None,
            streamer=streamer,
            **cache_argument(past_key_values),
        )


PREFILL_CHUNK = 512  # prompt tokens per forward pass before generation; between chunks others may use the model


def prefill(model, ids: torch.Tensor, past_key_values, gate: Gate | None, always: bool = False):
    """The cache of all but the last token of ``ids`` (1, T), computed ``PREFILL_CHUNK`` tokens at a time after
    what ``past_key_values`` holds already, each chunk through ``gate.run``; the gate is offered between chunks. A
    long prompt then holds the model for one chunk at a time instead of its whole prefill (an 8,000-token prompt:
    about a minute on 2 CPU cores), and attention needs memory for chunk x T scores, not T x T. Causal attention
    makes the result the same as one pass, up to float round-off. A prompt within one chunk is left to the caller
    (``generate``), unless ``always``."""
    done = past_key_values.get_seq_length() if past_key_values is not None else 0
    end = ids.shape[1] - 1  # generate runs the last token itself, and samples from its logits
    if end <= done or (end - done <= PREFILL_CHUNK and not always):
        return past_key_values
    from transformers import DynamicCache

    cache = past_key_values if past_key_values is not None else DynamicCache(config=model.config)
    for start in range(done, end, PREFILL_CHUNK):
        stop = min(start + PREFILL_CHUNK, end)
        positions = torch.arange(start, stop, device=ids.device)[None]
        # The base model: the LM head's logits for every prompt token are not needed.
        run_under(gate, model.base_model, input_ids=ids[:, start:stop], position_ids=positions, use_cache=True,
                  **cache_argument(cache))  # fmt: skip
        if gate is not None:
            gate.between_tokens()
    return cache


def finish(tokenizer, ids: torch.Tensor, out: torch.Tensor, params: SamplingParams, cancel=None) -> Generation:
    """Decode what ``run_generate`` produced after the prompt ``ids``: text cut at the first stop string, counts,
    and why it ended."""
    return finish_tokens(tokenizer, ids.shape[1], out[0, ids.shape[1] :], params, cancel)


def finish_tokens(tokenizer, prompt_tokens: int, new: torch.Tensor, params: SamplingParams, cancel=None) -> Generation:
    """``finish`` for the generated tokens ``new`` (1-D) of a prompt of ``prompt_tokens`` tokens."""
    text, stopped = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), params.stop)
    eos = tokenizer.eos_token_id
    ended = stopped or (len(new) > 0 and int(new[-1]) in token_set(eos))
    if ended:
        reason = "stop"
    elif len(new) >= params.max_new_tokens:
        reason = "length"
    else:
        reason = "cancelled" if cancel is not None and cancel.is_set() else "stop"
    return Generation(text, prompt_tokens, len(new), reason)


def token_set(token_ids) -> set[int]:
    """End token ids as a set, whether a config holds one id, a list of them, or None."""
    if token_ids is None:
        return set()
    return set(token_ids) if isinstance(token_ids, list | tuple | set) else {int(token_ids)}


def complete(
    model, tokenizer, ids: torch.Tensor, params: SamplingParams, past_key_values=None, cancel=None, gate=None
) -> Generation:
    """Generate to the end and return text, token counts and finish reason."""
    out = run_generate(model, tokenizer, ids, params, None, cancel, past_key_values, gate)
    return finish(tokenizer, ids, out, params, cancel)


def complete_batch(
    model,
    tokenizer,
    prompts: Sequence[torch.Tensor],
    params: SamplingParams,
    batch_size: int = 8,
    cancel: threading.Event | None = None,
    gate: Gate | None = None,
) -> list[Generation]:
    """``complete`` for many prompts (each (1, T)), ``batch_size`` at a time, in input order.

    A decoding step reads every weight once whatever the batch, so where a small model's step is bound by memory
    (a CPU) a step for eight prompts costs far less than eight steps: about 2.2 times one on this project's 2-core
    machine. Prefill gains nothing (it is bound by compute already). Prompts are grouped by length so a batch pads
    little (``length_groups``). Without a gate a batch is decoded by ``grit.decoding.decode_together`` (each
    prompt prefilled alone, rows leave the batch as they end): answers equal the unbatched ones, greedy or seeded.
    Under a gate that does not batch (a server decoding in turn) or for a model the decoder cannot run,
    transformers' ``generate`` decodes the batch left-padded (the attention mask hides the pads and positions
    count real tokens only); greedy answers are the unbatched ones (tests/test_generate.py checks it); with
    sampling, ``seed`` seeds each batch, so they differ. ``cancel`` ends the batch under way and skips the rest
    (their answers are empty, "cancelled"); ``gate`` is held per batch and offered to waiting work after every
    token.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(gate, DecodingGate):  # every prompt is a row of the gate's shared batch, from its first token
        futures = [gate.start(ids, params, cancel=cancel) for ids in prompts]
        return [finish(tokenizer, ids, f.result(), params, cancel) for ids, f in zip(prompts, futures, strict=True)]
    from grit.decoding import decode_together, unsupported  # grit.decoding imports this module

    own_loop = gate is None and unsupported(model) is None
    pad = generation_config(model, params, tokenizer).pad_token_id
    ends = token_set(tokenizer.eos_token_id)
    out: list[Generation | None] = [None] * len(prompts)
    for group in length_groups([p.shape[1] for p in prompts], batch_size):
        if cancel is not None and cancel.is_set():
            for i in group:
                out[i] = Generation("", prompts[i].shape[1], 0, "cancelled")
            continue
        if own_loop:
            generated = decode_together(model, tokenizer, [prompts[i] for i in group], params, cancel=cancel)
            for i, out_ids in zip(group, generated, strict=True):
                out[i] = finish(tokenizer, prompts[i], out_ids, params, cancel)
            continue
        width = prompts[group[-1]].shape[1]
        ids = torch.full((len(group), width), pad, dtype=torch.long, device=prompts[group[0]].device)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(group):
            n = prompts[i].shape[1]
            ids[row, width - n :] = prompts[i][0]
            mask[row, width - n :] = 1
        generated = run_generate(model, tokenizer, ids, params, None, cancel, gate=gate, attention_mask=mask)
        for row, i in enumerate(group):
            new_tokens = own_tokens(generated[row, width:], ends, pad)
            out[i] = finish_tokens(tokenizer, prompts[i].shape[1], new_tokens, params, cancel)
    return out  # type: ignore[return-value]


def length_groups(lengths: Sequence[int], batch_size: int, slack: float = 1.25) -> list[list[int]]:
    """Indices grouped into batches of similar length: sorted, at most ``batch_size`` each, and none more than
    ``slack`` times (plus 16 tokens) as long as its shortest. One long prompt would pad a batch of short ones to
    its length, and prefill, which batching does not speed up on a CPU, would cost the batch's size times more."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        last = groups[-1] if groups else None
        if last and len(last) < batch_size and lengths[i] <= slack * lengths[last[0]] + 16:
            last.append(i)
        else:
            groups.append([i])
    return groups


def own_tokens(new: torch.Tensor, ends: set[int], pad: int) -> torch.Tensor:
    """A batch row's generated tokens without what follows its end: once a row is done, generate pads it while the
    others go on."""
    for k, token in enumerate(new.tolist()):
        if token in ends:
            return new[: k + 1]
    n = len(new)
    while n > 0 and int(new[n - 1]) == pad:
        n -= 1
    return new[:n]


def generate_text(model, tokenizer, ids: torch.Tensor, params: SamplingParams, past_key_values=None) -> str:
    return complete(model, tokenizer, ids, params, past_key_values).text


def stream_text(
    model,
    tokenizer,
    ids: torch.Tensor,
    params: SamplingParams,
    cancel: threading.Event | None = None,
    past_key_values=None,
    gate: Gate | None = None,
    outcome: Generation | None = None,
) -> Iterator[str]:
    """Yield text pieces as they are decoded. Closing the iterator early (or setting ``cancel``) stops generation.
    ``outcome``, when given, is filled in once the stream ends (whole text, token counts, finish reason)."""
    cancel = cancel or threading.Event()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None)
    errors: list[BaseException] = []
    outputs: list[torch.Tensor] = []

    def work() -> None:
        try:
            outputs.append(run_generate(model, tokenizer, ids, params, streamer, cancel, past_key_values, gate))
        except BaseException as e:  # surfaced in the consumer's thread below
            errors.append(e)
            streamer.on_finalized_text("", stream_end=True)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    # Hold back the tail that could be the start of a stop string, so a stream never shows part of one.
    hold = max((len(s) for s in params.stop), default=1) - 1
    pending = ""
    stopped = False
    try:
        for piece in streamer:
            pending += piece
            text, stopped = cut_at_stop(pending, params.stop)
            if stopped:
                if text:
                    yield text
                pending = ""
                break
            if len(pending) > hold:
                ready, pending = pending[: len(pending) - hold], pending[len(pending) - hold :]
                yield ready
        if pending and not cancel.is_set():
            yield pending
    finally:
        finished = not cancel.is_set()
        cancel.set()  # the consumer stopped reading (or a stop string showed): stop the model. The streamer's
        thread.join()  # queue is unbounded, so the worker never blocks on it and ends at the next token.
    if errors:
        raise errors[0]
    if outcome is not None and outputs:
        # A stop string seen in the stream ended it as "stop"; otherwise judge from the tokens, as ``complete`` does.
        done = finish(tokenizer, ids, outputs[0], params, None if finished or stopped else cancel)
        done.finish_reason = "stop" if stopped else done.finish_reason
        vars(outcome).update(vars(done))
