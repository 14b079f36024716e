"""Data parallel training: one process per device, started by torchrun, each with its own shard of every batch.

    torchrun --nproc-per-node 8 -m grit.cli train configs/toy-unified.yaml       # one machine, 8 GPUs (NCCL)
    torchrun --nproc-per-node 2 -m grit.cli train configs/toy-unified.yaml       # CPU, 2 processes (gloo)
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST0 --master-port 29500 --nproc-per-node 8 \\
        -m grit.cli train cfg.yaml                                               # and --node-rank 1 on HOST1

Without torchrun's environment (``WORLD_SIZE`` unset
or 1) the trainer is one plain process and nothing here communicates. Across machines, ``output_dir`` must be on a
file system they share: rank 0 writes checkpoints and every process reads the newest one to resume.

**Batches are global.** ``data.embedding_batch_size`` and ``data.generative_batch_size`` count examples over all
processes. Every process draws the same batch from the same seeded sampler and keeps its rows
``rank*b .. rank*b+b-1`` (b = batch size / world size), so a config means the same training on 1 or 64 processes:
2 gloo processes give the losses and gradients of 1 process with the whole batch (tests/train/test_distributed.py).

**Negatives across processes.** Each process embeds its queries and passages; ``gather`` concatenates them from
all processes with ``torch.distributed.nn.functional.all_gather``, whose backward returns to each process the sum
over processes of the gradient of its own rows. Every process then computes the same global-batch contrastive
loss (so every query is scored against every passage of the batch, and the symmetric direction is exact too). Its
gradient on each process is ``world`` times that process's share, which the average in ``all_reduce_grads``
divides out. The generative loss is divided by counts over all processes for the same reason (see grit/train/step.py).

**Why not DistributedDataParallel.** DDP all-reduces inside backward and expects each backward to follow one
call of the wrapped module's forward. A GRIT step runs several backward passes (each GradCache chunk, then the
generative loss, times gradient accumulation) through ``lm.base_model`` and ``lm`` directly. So gradients are
summed locally over the whole step and averaged once per optimizer step (``all_reduce_grads``): one all-reduce
per step instead of one per backward, at the cost of DDP's overlap of communication with the backward pass.

**Accelerate, FSDP, DeepSpeed on GPU clusters.** ``accelerate launch`` starts the same processes torchrun does (it
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so on a cluster configured with ``accelerate
config`` (choose "multi-GPU", one or more machines, no FSDP / DeepSpeed):

    accelerate launch -m grit.cli train cfg.yaml     # on every machine, with its machine_rank in the config

runs this same data-parallel loop. Every process holds the whole model and optimizer state: fine for LoRA on a 7B
model in bf16 (~15 GB per GPU) and full fine-tuning up to ~1B parameters on 80 GB GPUs. Sharding parameters (FSDP,
DeepSpeed ZeRO-3, as GritLM's 7B full fine-tune) is not implemented: choosing FSDP or DeepSpeed in ``accelerate
config`` does not shard this loop. It would take wrapping each decoder layer with
``torch.distributed.fsdp.fully_shard`` before the optimizer is built (its hooks sit on each layer's forward, so the
calls through ``lm.base_model`` keep working), ``set_requires_gradient_sync(False)`` on every backward but the
step's last, skipping ``all_reduce_grads``, and sharded checkpoints (``torch.distributed.checkpoint``).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run. ``world == 1``: a single process, every collective is a no-op."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    started_here: bool = False  # this module opened the process group, so it closes it

    @property
    def main(self) -> bool:
        """The process that writes files and shows progress."""
        return self.rank == 0


def setup(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU), or run alone on
    ``device`` (resolved by ``grit.hardware``). Under torchrun a CUDA run puts each process on its LOCAL_RANK GPU
    (the index of ``device`` is not used); a CPU run stays on the CPU even where GPUs exist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process {rank} has LOCAL_RANK {local_rank}, but this machine has {torch.cuda.device_count()} "
                "CUDA GPU(s); start at most that many processes per machine, or train with device=cpu"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    log.info("process %d of %d on %s (%s)", rank, world, device, dist.get_backend())
    return Dist(rank, world, device, started)


def teardown(d: Dist) -> None:
    if d.started_here and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: tuple | list, d: Dist, what: str) -> tuple | list:
    """This process's rows of a global batch."""
    if len(items) % d.world:
        raise ValueError(f"{what} of {len(items)} does not split evenly over {d.world} processes")
    b = len(items) // d.world
    return items[d.rank * b : (d.rank + 1) * b]


def gather(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """(b, ...) rows of every process → (world*b, ...) in rank order; gradients flow back to each process's rows."""
    if d.world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch 2.13 marks it deprecated in favour of a private module; it is still the public differentiable gather.
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(x.contiguous()))


def all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Elementwise sum over processes (a copy; no gradient)."""
    values = values.detach().to(d.device, copy=True)  # NCCL needs the tensor on the GPU; gloo takes either
    if d.world > 1:
        dist.all_reduce(values)
    return values


def all_reduce_grads(params: list[torch.nn.Parameter], d: Dist, bucket: int = 1 << 25) -> None:
    """Average ``.grad`` over processes, in flat buckets of up to ``bucket`` elements (one collective each).

    Parameters without a gradient (an untied LM head in embedding mode) are left out. Every process runs the same
    graph on its shard, so all leave out the same ones and send buffers of the same layout.
    """
    if d.world == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        start = 0
        while start < len(grads):
            end, size = start, 0
            while end < len(grads) and (size == 0 or size + grads[end].numel() <= bucket):
                size += grads[end].numel()
                end += 1
            flat = torch.cat([g.reshape(-1) for g in grads[start:end]])
            dist.all_reduce(flat)
            flat /= d.world
            offset = 0
            for g in grads[start:end]:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            start = end


def broadcast_params(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Give every process rank 0's values (randomly initialised LoRA weights must start equal, as in DDP)."""
    if d.world > 1:
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)


def gather_objects(obj: Any, d: Dist) -> list[Any]:
    """``obj`` of every process, in rank order (for rank 0 to save each process's RNG state)."""
    if d.world == 1:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()
