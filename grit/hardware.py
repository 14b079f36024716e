"""Where a model runs: device, dtype, threads and weights, resolved once at an entry point into a ``Placement``.

Every entry point (``GritModel.load``, the CLI, ``grit.train.train``, ``grit.eval.run``, ``grit serve``) calls
``resolve_placement`` once; everything below receives the resolved ``Placement`` and never sees "auto" again, and
every artefact (train_config.json and log.jsonl, eval results.json, an index manifest, the server's /v1/models)
records ``Placement.as_dict()`` so a number can be checked on another machine.

Precedence, for device, dtype and weights each: an explicit argument ("cpu", "float32", a ``torch.device``) wins;
"auto" (or None) takes ``$GRIT_DEVICE`` / ``$GRIT_DTYPE`` / ``$GRIT_WEIGHTS`` when set; otherwise the hardware
decides as below. The variables let a user pin a machine's choice without touching every command, and let the test
suite run the same computation on every kind of machine (tests/conftest.py pins cpu + float32 + plain weights).

What "auto" means, and why it keeps that name: grit's ``dtype="auto"`` is *the fastest dtype this hardware runs
natively*, not transformers' ``dtype="auto"`` (the checkpoint's dtype). A checkpoint's dtype says how it was saved,
not how fast it runs: SmolLM2's GGUF converts to float32, and a bf16 checkpoint on an AVX2-only CPU would run hundreds
of times slower than float32. A user who asks grit for "auto" asks for speed on this machine, so that is what it
resolves to (and the resolved value is recorded, so the choice is never hidden):
- CUDA: bfloat16 where the GPU has it, else float16.
- CPU with AMX or AVX512-BF16: bfloat16 (matmuls ~2.5-7x faster than float32 there).
- Other CPUs (AVX2 only): float32. PyTorch emulates bf16 matmuls there, measured 0.0003 vs 0.11 TFLOP/s on a
  2-core AMD EPYC without AVX-512.
Device "auto" is the first CUDA GPU when there is one, else the CPU.

Weights (``weights``, ``$GRIT_WEIGHTS``): "plain" keeps linear weights in the compute dtype; "float16" stores them in
float16 and computes in float32 with fbgemm's CPU kernels (``grit.fp16_weights``). "auto" picks float16 for float32
compute on a CPU that has fbgemm (PyTorch's x86 builds), plain elsewhere. Why: a decoding step reads every weight
once per token, and on a CPU in float32 that read is the step. Measured on 2 vCPUs of an AMD EPYC without AVX-512
(``AVX2`` kernels): a default-model step spent 79% of its time in ``aten::mm`` at 13 GB/s; float16 weights made it
1.4x (1 row) to 1.6x (8 rows) faster on 1 thread, with identical greedy tokens. Training is always plain.

Threads per phase on a CPU (``decode_threads``), and why. A decoding step of a small model is hundreds of tiny
operations (SmolLM2-135M: 211 matrix products per step, each well under a millisecond), and every one of them ends
at a barrier where the OpenMP threads wait for each other. How they wait decides the speed:
- libgomp (torch's OpenMP) spins at a barrier only while it manages no more threads than there are CPUs; past that
  it sleeps almost at once, and every barrier costs a wake-up. Each thread that calls into torch gets a team of its
  own, so a server (model loaded on the main thread, decoding on another, prefills and embedding batches on more)
  is past that limit as soon as a second thread runs a forward pass.
- Measured on 2 vCPUs of an AMD EPYC with AVX-512 BF16 (SmolLM2-135M, one decoding step at 64 tokens of context):
  on the main thread alone, 45 ms with 1 or 2 threads; from a second thread, bfloat16 52 ms with 1 thread vs 71 ms
  with 2 (8 rows: 71 vs 108; 32 rows: 151 vs 172), float32 55 vs 71 (8 rows: 99 vs 148; 32 rows: 189 vs 191).
  OMP_WAIT_POLICY=PASSIVE made every two-thread step slow (110-135 ms at 8 rows, main thread included), ACTIVE let
  idle teams spin on the cores the working team needs (77-92 ms). A 512-token prefill, by contrast, runs 1.6x
  (bf16) / 1.3x (fp32) faster on 2 threads: its products are large enough that a barrier costs nothing.
So decoding steps run on one thread and prefill / embedding on all (``decode_threads``); the rule was measured on 2
vCPUs, and on larger CPUs half the threads is a starting point, not a measurement. ``grit serve`` also keeps the
process at one team: every forward pass runs on one model thread (``grit.serve.scheduler.ModelThread``). With one
team, a 2-thread step is faster than a 1-thread step (1 row 42 vs 60 ms, 32 rows 130-180 vs 205-235). But beside a
busy process it keeps 19% of its quiet speed, against 65% for 1 thread. So 1 thread stays the default, and
``--decode-threads`` is there for a machine of its own. With grit's leaner Llama step (``grit.decode_step``) on 2
AVX2 cores the same holds: 2 threads level quiet, 26% vs 58% of quiet speed beside a busy process.
Without a server, ``grit.decoding.decode_together`` (``generate``) keeps the caller's threads, as transformers'
``generate`` did: alone in the process, one team, 2 threads decode a stream 1.15x faster than 1 there.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_ENV, DTYPE_ENV, THREADS_ENV, WEIGHTS_ENV = "GRIT_DEVICE", "GRIT_DTYPE", "GRIT_THREADS", "GRIT_WEIGHTS"
# How linear weights are held: "plain" in the compute dtype, "float16" stored in float16 and computed in float32 by
# fbgemm's CPU kernels (grit.fp16_weights: decoding is bound by the bytes it reads)
WEIGHTS = ("plain", "float16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where that file does not say)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")


def describe_machine() -> str:
    """One line naming what a benchmark ran on: CPU model and count, torch's CPU kernels, native bfloat16, GPU."""
    import os

    flags = cpu_flags()
    bf16 = "AMX" if "amx_bf16" in flags else ("AVX512-BF16" if "avx512_bf16" in flags else "no native bf16")
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu_model() or 'unknown CPU'}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"{torch.backends.cpu.get_cpu_capability()} kernels, {bf16}{gpu}")  # fmt: skip


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Placement:
    """A concrete device, dtype, CPU thread count and weight storage (never "auto"). Build with
    ``resolve_placement``."""

    device: torch.device
    dtype: torch.dtype
    threads: int  # torch's intra-op threads for CPU work
    weights: str = "plain"  # one of WEIGHTS; training always builds "plain"

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")

    @property
    def numerics(self) -> str:
        """What decides the numbers a forward pass gives beyond the weights' values: the dtype, and float16 weight
        storage where used (a KV cache computed one way is not reused by the other)."""
        return dtype_name(self.dtype) + ("" if self.weights == "plain" else f"+{self.weights}-weights")

    def as_dict(self) -> dict[str, str | int]:
        """What artefacts record: the resolved values and the facts that decided them."""
        return {
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "weights": self.weights,
            "threads": self.threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": "native" if cpu_has_fast_bf16() else "emulated",
            "torch": torch.__version__,
        }

    def apply_threads(self) -> None:
        """Set torch's thread count to this placement's (a no-op when it already is)."""
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


def available_devices() -> list[str]:
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """A concrete device; an unknown or absent one is a ``ValueError`` naming it and what this machine has."""
    if isinstance(device, torch.device):
        requested, source = device, f"device {str(device)!r}"
    else:
        text = os.environ.get(DEVICE_ENV, "auto") if device in (None, "auto") else device
        source = f"{DEVICE_ENV}={text!r}" if device in (None, "auto") else f"device {text!r}"
        text = text.strip().lower()
        if text == "auto":
            text = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            requested = torch.device(text)
        except (RuntimeError, ValueError):
            here = ", ".join(available_devices())
            raise ValueError(f"{source} is not a device; expected auto, cpu, cuda or cuda:N (here: {here})") from None
    if requested.type not in ("cpu", "cuda"):
        raise ValueError(f"{source}: grit runs on cpu or cuda; available here: {', '.join(available_devices())}")
    if requested.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(
                f"device {str(requested)!r} asked for, but this machine has no CUDA GPU (torch {torch.__version__}); "
                "available: cpu"
            )
        if requested.index is not None and requested.index >= count:
            raise ValueError(
                f"device {str(requested)!r} asked for, but this machine has {count} CUDA GPU(s); "
                f"available: {', '.join(available_devices())}"
            )
        if requested.index is None:  # recorded as what ran: "cuda:0", not "cuda"
            requested = torch.device("cuda", torch.cuda.current_device())
    return requested


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A concrete dtype for ``device``: explicit, else ``$GRIT_DTYPE``, else the fastest native one (module doc)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} is not one grit runs in; expected one of {', '.join(DTYPES)}")
        return dtype
    from_env = dtype in (None, "auto")
    text = os.environ.get(DTYPE_ENV, "auto") if from_env else dtype
    text = text.strip().lower()
    if text == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32
    if text not in DTYPES:
        source = f"{DTYPE_ENV}={text!r}" if from_env else f"unknown dtype {text!r}"
        raise ValueError(f"{source}: expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[text]


def decode_threads(threads: int) -> int:
    """Threads for a decoding step on a CPU that has ``threads`` for everything else (module doc): 1 up to 4."""
    return 1 if threads <= 4 else threads // 2


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, restored after (hold the model's gate: the count is
    the process's, so no other forward pass may run meanwhile)."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_threads(threads: int | None) -> int:
    """CPU threads: explicit (>= 1), else ``$GRIT_THREADS``, else torch's current count (its default: the cores)."""
    if threads is None and os.environ.get(THREADS_ENV):
        text = os.environ[THREADS_ENV]
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={text!r} is not a whole number of threads") from None
    if threads is None or threads == 0:
        return torch.get_num_threads()
    if threads < 0:
        raise ValueError(f"threads must be >= 1 (or 0 for torch's default), got {threads}")
    return threads


def resolve_weights(weights: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """How linear weights are held (``WEIGHTS``): explicit, else ``$GRIT_WEIGHTS``, else "float16" for float32
    compute on a CPU with fbgemm's kernels (module doc) and "plain" elsewhere. Float16 weights that cannot run here
    (a GPU, a dtype other than float32, no fbgemm) are a ``ValueError`` saying why."""
    from grit.fp16_weights import unavailable

    from_env = weights in (None, "auto")
    text = (os.environ.get(WEIGHTS_ENV, "auto") if from_env else weights).strip().lower()
    source = f"{WEIGHTS_ENV}={text!r}" if from_env else f"weights {text!r}"
    if text == "auto":
        fits = device.type == "cpu" and dtype == torch.float32 and unavailable() is None
        return "float16" if fits else "plain"
    if text not in WEIGHTS:
        raise ValueError(f"{source}: expected auto or one of {', '.join(WEIGHTS)}")
    if text == "plain":
        return text
    if device.type != "cpu":
        why = f"the device is {device}"
    elif dtype != torch.float32:
        why = f"the dtype is {dtype_name(dtype)}, not float32"
    else:
        why = unavailable()
    if why:
        raise ValueError(f"{source}: float16 weights are fbgemm's CPU kernels for float32 compute, and {why}")
    return text


def resolve_placement(
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    threads: int | None = None,
    weights: str | None = "auto",
) -> Placement:
    """The one place "auto" becomes concrete (see the module docstring for the rules and the variables)."""
    resolved = resolve_device(device)
    compute = resolve_dtype(dtype, resolved)
    return Placement(resolved, compute, resolve_threads(threads), resolve_weights(weights, resolved, compute))
