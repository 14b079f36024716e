"""Which device and dtype to run on, decided from what the machine can actually do.

bfloat16 is only a win where the hardware multiplies it natively: on a GPU, or a CPU with AMX / AVX512-BF16 (~7x
faster than float32 there). On an AVX2-only CPU PyTorch emulates bf16 matmuls and they run hundreds of times slower
than float32 (measured: 0.0003 vs 0.11 TFLOP/s on a 2-core AMD EPYC without AVX-512), so "auto" picks float32 there.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' → bfloat16 on GPUs with bf16 and on CPUs with AMX/AVX512-BF16, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected 'auto' or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def describe() -> dict[str, str | int]:
    """What `grit info` prints about the machine."""
    device = resolve_device()
    return {
        "device": str(device),
        "auto_dtype": str(resolve_dtype("auto", device)).removeprefix("torch."),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count() or 0,
        "cpu_bf16": "native (AMX/AVX512-BF16)" if cpu_has_fast_bf16() else "emulated (slow): float32 preferred",
    }
