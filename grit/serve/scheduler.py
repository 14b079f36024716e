"""How requests share one model in one process.

The scheduling, and why:

* **One forward pass at a time** (``FairGate``). On a CPU, two forward passes at once do not run faster than one
  after the other: they fight over the same cores (with OpenMP, much slower: spinning threads collide), and on a GPU
  they fight over memory. So the model is a lock, handed out first come, first served (a ticket lock: plain
  ``threading.Lock`` lets a releasing thread take it right back and starve the others).
* **Generation gives the model back after every token** (the decoder's steps, or ``FairGate.between_tokens``
  called from inside transformers' decoding loop). A waiting embedding batch or another request's prefill goes
  first, then decoding continues. A long chat therefore delays an embedding request by about one decoding step,
  not by its whole length.
* **Embedding requests are batched** (``EmbeddingBatcher``). One thread collects requests; while it waits for the
  model, more requests queue up, and when it gets the model it takes all of them (up to ``max_batch_texts``) into one
  call per instruction, so many small requests cost about what one large one costs.
* **Bounded admission** (``Admission``): at most ``max_pending`` requests are inside at once; the next ones wait in
  line, in arrival order, up to ``admission_wait_s``, and are refused after that (HTTP 503 with ``Retry-After``)
  rather than queued without limit.

* **Every multi-threaded forward pass runs on one thread** (``ModelThread``): the holder of the gate hands its
  forward passes (embedding passes, prefill chunks, RAG's query encode and cache join, decoding steps) to it with
  ``FairGate.run`` and waits. On a CPU, torch's OpenMP (libgomp) gives each thread that runs a parallel region a
  team of its own and counts the threads of every team; once they outnumber the CPUs its threads stop spinning at
  barriers and sleep, so every barrier of every layer costs a wake-up. Measured (bench/RESULTS.md, issue 23): 384
  STS-B sentences encode 1.3x faster when the process has one team than when a second exists. The server loads the
  model on that thread too; decoding steps run there on fewer threads than the rest (``grit.hardware.decode_threads``
  says why).
* **Generations are decoded together** (``grit.decoding.ContinuousDecoder``, continuous batching as in vLLM): the
  server's gate is the decoder, which holds the model for one step of every active generation at a time; a new
  request prefills (in chunks, each one turn of the gate) and joins the batch between steps. Where a model cannot
  be batched that way (``grit.decoding.unsupported``) or ``max_decode_batch`` is 1, generations advance in turn,
  one token each (``FairGate.between_tokens``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from grit.rng import TorchRng

log = logging.getLogger(__name__)


class ModelThread:
    """One thread that runs the model's work handed to it (``call``), one job at a time, in the caller's autograd
    mode (torch's grad and inference modes are per thread). The module doc says why a server wants one."""

    def __init__(self, name: str = "grit-model") -> None:
        self._jobs: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._closing = threading.Lock()  # a job is queued before close's end marker, or refused
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` run on this thread; its result, or its exception raised here. Called from this
        thread itself, ``fn`` runs at once (a job that hands work over would otherwise wait for itself)."""
        if self.is_current:
            return fn(*args, **kwargs)
        future: Future = Future()
        with self._closing:
            if self._closed:  # nothing would ever run it: the caller would wait forever
                raise RuntimeError("the model thread is closed")
            self._jobs.put((fn, args, kwargs, torch.is_inference_mode_enabled(), torch.is_grad_enabled(), future))
        return future.result()

    def close(self) -> None:
        """Run the jobs already handed over, then end the thread; later calls are refused."""
        with self._closing:
            self._closed = True
            self._jobs.put(None)
        if not self.is_current:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, kwargs, inference, grad, future = job
            try:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    result = fn(*args, **kwargs)
            except BaseException as e:  # the caller's to handle, as if fn had run there
                future.set_exception(e)
            else:
                future.set_result(result)


class FairGate:
    """Exclusive use of the model, granted in arrival order (a ticket lock). With a ``model_thread``, the holder's
    forward passes (``run``) execute on that one thread."""

    def __init__(self, model_thread: ModelThread | None = None) -> None:
        self.model_thread = model_thread
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._held_since = 0.0
        self.busy_s = 0.0  # seconds the model has been held, in all (a server's busy share: its rate of growth)

    def _acquire(self) -> None:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._cond.wait_for(lambda: self._serving == ticket)
            self._held_since = time.perf_counter()

    def _release(self) -> None:
        with self._cond:
            self.busy_s += time.perf_counter() - self._held_since
            self._serving += 1
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Threads waiting for the model (not counting the holder)."""
        with self._cond:
            return max(self._next_ticket - self._serving - 1, 0)

    @contextmanager
    def hold(self) -> Iterator[None]:
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` for the holder: on the model thread when there is one, else right here. ``fn``
        must not offer the gate (``between_tokens``): the holder offers it between runs, in its own thread."""
        if self.model_thread is None:
            return fn(*args, **kwargs)
        return self.model_thread.call(fn, *args, **kwargs)

    def between_tokens(self) -> None:
        """Called by the holder at a safe point: if others wait, let them go first, then queue up again.

        The random generators' state goes with the holder: sampling draws from torch's global generator, which the
        others' turns advance (or reseed), so without this a seeded generation would not repeat once interleaved."""
        if self.model_thread is not None and self.model_thread.is_current:
            # The next holder would hand its work to this thread, which waits for the gate: neither could go on.
            raise RuntimeError("the gate was offered from inside FairGate.run; offer it between runs instead")
        if self.waiting:
            state = TorchRng.capture()
            self._release()
            self._acquire()
            state.restore()


class Overloaded(Exception):
    """The server holds as many requests as it admits; the client should retry later."""


class Admission:
    """At most ``limit`` requests inside at once. One that finds the server full waits in line, first come first
    served, up to ``wait_s`` seconds for a place, and is refused (``Overloaded``) after that, or at once with
    ``wait_s=0``. Without the line, clients that retry after a 503 are served in no order at all: one can lose every
    race for minutes while later ones get in.

    ``enter`` is awaited on the event loop; ``leave`` may be called from any thread (a stream's cleanup runs where
    the garbage collector finds it) and hands its place straight to the first in line.
    """

    def __init__(self, limit: int, wait_s: float = 0.0) -> None:
        self.limit, self.wait_s = limit, wait_s
        self._inside = 0
        self._line: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = collections.deque()
        self._lock = threading.Lock()

    @property
    def inside(self) -> int:
        return self._inside

    @property
    def waiting(self) -> int:
        return len(self._line)

    async def enter(self) -> None:
        """Take a place (waiting in line when the server is full), or raise ``Overloaded``. Every ``enter`` needs
        one ``leave``."""
        with self._lock:
            if self._inside < self.limit and not self._line:
                self._inside += 1
                return
            if self.wait_s <= 0:
                raise Overloaded(f"the server is at its limit of {self.limit} requests in progress")
            loop = asyncio.get_running_loop()
            turn = loop.create_future()
            self._line.append((loop, turn))
        try:
            await asyncio.wait_for(asyncio.shield(turn), self.wait_s)
        except TimeoutError:
            with self._lock:
                if (loop, turn) in self._line:
                    self._line.remove((loop, turn))
                    raise Overloaded(
                        f"the server is at its limit of {self.limit} requests in progress (waited {self.wait_s:g} s)"
                    ) from None
            await turn  # handed a place as the wait ran out: keep it
        except BaseException:  # the client left while in line: give up the place, or the turn
            with self._lock:
                if (loop, turn) in self._line:
                    self._line.remove((loop, turn))
                    raise
            self.leave()
            raise

    def leave(self) -> None:
        with self._lock:
            if self._line:  # the place goes to the first in line; the count stays
                loop, turn = self._line.popleft()
                loop.call_soon_threadsafe(hand_over, turn)
                return
            self._inside -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.enter()
        try:
            yield
        finally:
            self.leave()


def hand_over(turn: asyncio.Future) -> None:
    if not turn.done():
        turn.set_result(None)


PASS_CHARS = 16_000  # about 4,000 tokens of English: a few seconds of one forward pass on a 2-core CPU


@dataclass
class EmbeddingJob:
    texts: list[str]
    instruction: str
    max_length: int
    future: Future = field(default_factory=Future)


class EmbeddingBatcher:
    """Runs embedding requests from many callers as few ``model.encode`` calls (see the module docstring)."""

    def __init__(
        self, model, gate: FairGate, max_batch_texts: int = 256, batch_size: int = 32, max_wait_s: float = 0.01
    ) -> None:
        self.model = model
        self.gate = gate
        self.max_batch_texts = max_batch_texts
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s  # how long a batch waits for stragglers once it has the model
        self._jobs: queue.SimpleQueue[EmbeddingJob | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="grit-embed", daemon=True)
        self._thread.start()
        self.batches = 0  # how many encode calls ran (tests and logs read it)
        self.on_batch = None  # called with each batch's number of texts (metrics)

    def submit(self, texts: list[str], instruction: str, max_length: int) -> Future:
        """A future of the (len(texts), dim) float32 normalized embeddings."""
        job = EmbeddingJob(list(texts), instruction, max_length)
        self._jobs.put(job)
        return job.future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _take_waiting(self, first: EmbeddingJob) -> tuple[list[EmbeddingJob], bool]:
        """``first`` and the jobs queued behind it, up to ``max_batch_texts`` texts; and whether close() was seen."""
        jobs, count = [first], len(first.texts)
        # Clients whose answers just came back send their next request within milliseconds; waiting that long
        # makes the batch larger (fewer, fuller forward passes, less padding after sorting by length).
        deadline = time.monotonic() + self.max_wait_s
        while count < self.max_batch_texts:
            remaining = deadline - time.monotonic()
            try:
                job = self._jobs.get(timeout=remaining) if remaining > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            count += len(job.texts)
        return jobs, False

    def _loop(self) -> None:
        closing = False
        while not closing:
            first = self._jobs.get()
            if first is None:
                return
            with self.gate.hold():
                # Taken after the gate is ours: what arrived while a generation held the model joins this batch.
                jobs, closing = self._take_waiting(first)
                groups: dict[tuple[str, int], list[EmbeddingJob]] = {}
                for job in jobs:
                    if job.future.set_running_or_notify_cancel():
                        groups.setdefault((job.instruction, job.max_length), []).append(job)
                for (instruction, max_length), group in groups.items():
                    self._run(group, instruction, max_length)

    def _run(self, group: list[EmbeddingJob], instruction: str, max_length: int) -> None:
        texts = [t for job in group for t in job.texts]
        try:
            vectors = self._encode(texts, instruction, max_length)
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(texts))
        except Exception as e:  # inputs are checked before they are queued; this is a server fault
            log.exception("embedding batch of %d texts failed", len(texts))
            for job in group:
                job.future.set_exception(e)
            return
        start = 0
        for job in group:
            job.future.set_result(np.asarray(vectors[start : start + len(job.texts)]))
            start += len(job.texts)

    def _encode(self, texts: list[str], instruction: str, max_length: int) -> np.ndarray:
        """``model.encode`` of ``texts`` one forward pass at a time, offering the model between passes: a batch of
        hundreds of long texts would otherwise hold it for minutes. Texts are sorted by length first (as encode
        does) so that each pass pads little; a pass takes ``batch_size`` texts or ``PASS_CHARS`` characters, which
        ever comes first (one text longer than that is one pass: a bidirectional forward cannot be split)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: np.ndarray | None = None
        start = 0
        while start < len(order):
            end, chars = start, 0
            while end < len(order) and end - start < self.batch_size:
                size = len(texts[order[end]])
                if end > start and chars + size > PASS_CHARS:
                    break
                chars += size
                end += 1
            rows = order[start:end]
            vectors = self.gate.run(self.model.encode, [texts[i] for i in rows], instruction,
                                    batch_size=len(rows), max_length=max_length, show_progress=False)  # fmt: skip
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
            start = end
            if start < len(order):
                self.gate.between_tokens()
        return out
