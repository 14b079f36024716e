"""Linear weights kept in float16 and computed in float32 on a CPU: fbgemm's packed kernels, for inference.

Why: a decoding step reads every weight of the model once to produce one token per row, so on a CPU it is bound by
memory bandwidth, not arithmetic. In float32, SmolLM2-135M's linear layers are ~540 MB a token; halving the bytes
halves the time the step waits for memory. PyTorch's x86 build carries fbgemm's float16-weight kernels
(``torch.ops.quantized.linear_prepack_fp16`` / ``linear_dynamic_fp16``): the weight is stored in float16, packed
once for the kernel's access pattern, widened to float32 in registers and accumulated in float32. Activations stay
float32; the only change is each weight rounded to float16 (10-bit mantissa, 3 more bits than bfloat16).

Measured on 2 vCPUs of an AMD EPYC without AVX-512 (torch ``AVX2`` kernels, bench/RESULTS.md): the default model's
decoding step 1.4x faster on one row and 1.6x on eight (1 thread; 1.6x and 2.1x on 2), a 512-token prefill level
(0.9-1.1x), greedy tokens identical over 64 steps and a teacher-forced KL to float32 of 2e-6. Alternatives measured
on the same machine and left: torchao's int8 weight-only (``Int8WeightOnlyConfig``: 2.2x *slower* a step, its
fp32-activation int8 kernel is not vectorised for AVX2, and greedy answers left float32's at the third token);
aten's ``_weight_int8pack_mm`` (10x slower than float32 per product with float32 activations); bfloat16 weights
(1.7-2.3x slower per product on AVX2, which has no bf16 instructions).

Memory: fbgemm's packed layout takes ~1.8x the bytes of the float16 values in this build (measured: 60 packed
1536 x 576 matrices added 181 MB for 101 MB of float16), and the head gets its own copy, so a loaded default model
holds ~10% *more* than in plain float32 (949 vs 862 MiB resident after load), not half: the gain is speed.

Training never uses this (the packed weight has no gradient): ``grit.train`` builds its placement with plain
weights.
"""

from __future__ import annotations

import torch

KERNEL = "fbgemm"


def unavailable() -> str | None:
    """Why float16 weights cannot run here (None where they can): fbgemm is in PyTorch's x86 builds only."""
    if KERNEL not in torch.backends.quantized.supported_engines:
        engines = ", ".join(torch.backends.quantized.supported_engines) or "none"
        return f"this PyTorch build has no fbgemm kernels (its quantized engines: {engines})"
    return None


class Float16Linear(torch.nn.Module):
    """``nn.Linear``'s forward with its weight stored as fbgemm's packed float16 (inference only: no gradient)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        if linear.weight.dtype != torch.float32:
            raise ValueError(f"float16 weights pack a float32 layer; this one is {linear.weight.dtype}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach()
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():  # fbgemm's op has no backward: the layer would drop out of it
            raise RuntimeError("float16-packed weights are for inference and have no gradient; load the model with "
                               "weights='plain' (--weights plain) to train it")  # fmt: skip
        return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=float16 ({KERNEL})"


def pack_linear_weights(lm: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``lm`` (a float32 CPU model) with a ``Float16Linear``, in place; returns how
    many. A head tied to the input embeddings gets its own float16 copy (the embedding table stays float32: a
    lookup reads one row, not the table)."""
    reason = unavailable()
    if reason is not None:
        raise ValueError(f"float16 weights cannot run: {reason}")
    device = next(lm.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"float16 weights are a CPU kernel; this model is on {device}")
    linears = [(parent, name, child) for parent in lm.modules() for name, child in parent.named_children()
               if isinstance(child, torch.nn.Linear)]  # fmt: skip
    for parent, name, child in linears:
        setattr(parent, name, Float16Linear(child))
    # The float32 weights just dropped were allocated between the small tensors that stay (norms, the embedding
    # table), which pin the allocator's heap: the process kept their ~430 MB (1,355 vs 949 MiB after loading the
    # default model). Fresh copies of what stays let the heap go.
    for param in lm.parameters():
        param.data = param.data.clone()
    lm.requires_grad_(False)  # an inference model: a backward through it would skip every packed layer
    return len(linears)


def is_packed(lm: torch.nn.Module) -> bool:
    return any(isinstance(m, Float16Linear) for m in lm.modules())
