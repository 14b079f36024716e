"""The GRIT training loop: one trainer for embedding, generative and unified (GRIT) instruction tuning.

    from grit.train.config import TrainConfig
    from grit.train.trainer import train
    final = train(TrainConfig.from_file("configs/toy-unified.yaml"))     # GritModel.load(final) opens it

    grit train configs/toy-unified.yaml lr=1e-4 lora.enabled=true        # the same from the shell
    torchrun --nproc-per-node 2 -m grit.cli train configs/toy-unified.yaml   # data parallel, see distributed.py

Every optimizer step runs ``gradient_accumulation`` micro-batches through ``step.micro_step`` (contrastive and/or
next-token forward and backward, with GradCache when ``gradcache_chunk_size`` > 0), averages the gradients over
processes, clips them, and takes one AdamW step and one LR-schedule step. A plain loop of our own, not the HF
Trainer: a GRIT step does several backward passes through two entry points of one model, which the HF Trainer's
single ``compute_loss`` does not fit without copying its internals (as GritLM did).

    output_dir/
        train_config.json     the run's config, device, dtype and threads resolved (as they ran)
        log.jsonl             one line per step: step, loss, loss_emb, loss_gen, lr, grad_norm (of the gradient the
                              optimizer gets, before clipping unless clip_per_loss), grad_norm_emb and grad_norm_gen
                              (unified: each loss's own, before clipping), kl_rag, kl_anchor and kl_chat
                              (data.rag_distill's, data.rag_anchor's and data.chat_distill's KLs, part of
                              loss_gen; null without them), tokens,
                              truncated, seconds (this step's wall time; tokens / seconds is the throughput).
                              The first line of each start also has placement (device, dtype, threads, CPU
                              capability) and model (the identity of the model training started from, checked on
                              resume)
        checkpoint-<step>/    every save_every steps and at the end (checkpoint.py); a restart resumes from the newest
        final/                the trained model, LoRA merged in: GritModel.load(output_dir / "final")
        adapter/              LoRA only: the adapter alone, in peft's format, with train_config.json
                              (final/ and adapter/ also hold grit_training.json: examples of each kind read, and the
                              document caches cache-aware RAG rows taught the model to read, which RAG then
                              defaults to)

``python -m grit.train.plot output_dir`` (or ``grit plot-loss``) draws the loss curves from log.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from grit.hardware import resolve_placement
from grit.identity import TRAINING_RECORD, ModelIdentity, training_record
from grit.loading import write_folder_atomically
from grit.packing import attention_width

from . import checkpoint, distributed
from .batches import Batches
from .build import ADAPTER, Trainee, build_model, build_optimizer, build_scheduler
from .collate import EmbeddingBatch, GenerativeBatch
from .config import CONFIG_FILE, TrainConfig
from .distributed import Dist, all_reduce_grads, all_sum, barrier
from .step import Kls, micro_step

log = logging.getLogger(__name__)

KL_NAMES = [f.name for f in dataclasses.fields(Kls)]  # the distillation terms, logged as kl_<name>

LOG_FILE = "log.jsonl"
FINAL = "final"
Callback = Callable[[dict[str, Any]], None]


def train(config: TrainConfig, on_step: Callback | None = None) -> Path:
    """Train as ``config`` says; returns the folder of the final model. ``on_step(record)`` is called on every
    process after each step (and its checkpoint, if any) with the line written to log.jsonl.

    Device, dtype and threads are resolved here, once (``grit.hardware.resolve_placement``); everything below
    sees the resolved config, and train_config.json and the first log.jsonl line of each start record it."""
    # plain weights: float16-packed ones are an inference kernel with no gradient (grit.fp16_weights)
    placement = resolve_placement(config.device, config.dtype, config.threads or None, weights="plain")
    d = distributed.setup(placement.device)
    try:
        placement = dataclasses.replace(placement, device=d.device)  # under torchrun: this process's own GPU
        placement.apply_threads()
        return run(config.resolved(placement), d, on_step)
    finally:
        distributed.teardown(d)


def run(cfg: TrainConfig, d: Dist, on_step: Callback | None = None) -> Path:
    """The loop, for a config ``train`` resolved (concrete device, dtype and threads) on this process's ``d``."""
    out = Path(cfg.output_dir)
    resume_from = find_resume(cfg, out)
    seed_everything(cfg.seed + d.rank)  # per process, so dropout masks differ; LoRA init is broadcast from rank 0
    if cfg.eval_every:
        log.warning("eval_every=%d: the trainer does not evaluate yet; `grit eval` a checkpoint", cfg.eval_every)
    trainee = build_model(cfg, d, resume_from)
    check_same_base(trainee, out, resume_from)
    batches = Batches(cfg, trainee.model.tokenizer, trainee.model.format, d, attention_width(trainee.lm.config))
    total = total_steps(cfg, batches.batches_per_epoch())
    optimizer = build_optimizer(trainee, cfg)
    scheduler = build_scheduler(optimizer, cfg, total)
    step = 0
    if resume_from is not None:
        state = checkpoint.load(resume_from, optimizer, scheduler, d)
        batches.load_state_dict(state["samplers"])
        step = state["step"]
        log.info("resuming from %s: step %d of %d", resume_from, step, total)
    if d.main:
        cfg.save(out)
        truncate_log(out / LOG_FILE, step)
    params = [p for _, p in trainee.named_params()]
    bar = tqdm(total=total, initial=step, desc=f"train {cfg.mode}", unit="step", disable=not d.main)
    started = {"placement": trainee.model.placement.as_dict() | {"dtype": cfg.dtype}, "model": trainee.base.id}
    if resume_from is None and cfg.lora.init_from is not None:  # the adapter this run continues, by its files
        started["init_from"] = ModelIdentity.of(cfg.lora.init_from).as_dict()
    while step < total:
        record = optimizer_step(trainee, batches.next, optimizer, scheduler, params, cfg, d)
        step += 1
        record = {"step": step, **record}
        if started:  # the first line of each start says where it ran and on which model (a resume may move)
            record, started = {**record, **started}, None
        if d.main:
            with (out / LOG_FILE).open("a") as f:
                f.write(json.dumps(record) + "\n")
        show_progress(bar, record, cfg, total, d.main)
        if step == total or (cfg.save_every and step % cfg.save_every == 0):
            state = {"samplers": batches.state_dict()}
            checkpoint.save(out, step, trainee, optimizer, scheduler, state, cfg.keep_checkpoints, d)
        if on_step is not None:
            on_step(record)
    bar.close()
    return save_final(trainee, cfg, out, d, training_record(batches.examples(), cfg.data.rag_cache_attention))


def find_resume(cfg: TrainConfig, out: Path) -> Path | None:
    """The newest checkpoint to continue from, if the run has one; a changed config is reported."""
    newest = checkpoint.latest(out)
    if newest is None:
        return None
    if not cfg.resume:
        raise ValueError(f"{out} holds checkpoints (newest {newest.name}) and resume is false; use another output_dir")
    saved = out / CONFIG_FILE
    if saved.is_file():
        before, now = flatten(json.loads(saved.read_text())), flatten(cfg.to_dict())
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            log.warning("resuming %s with changed options: %s", out, ", ".join(changed))
    return newest


def check_same_base(trainee: Trainee, out: Path, resume_from: Path | None) -> None:
    """A resumed run must continue on the model it started from: the first log line records its identity."""
    if resume_from is None or not (out / LOG_FILE).is_file():
        return
    with (out / LOG_FILE).open() as f:
        first = json.loads(f.readline() or "{}")
    before, now = first.get("model"), trainee.base.id
    if before is not None and before != now:
        raise ValueError(
            f"{out} was trained from model {before}, but the model now is {now}: its files changed since the run "
            "started; train into another output_dir"
        )


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every GPU


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``epochs`` passes over the data."""
    if cfg.max_steps:
        return cfg.max_steps
    steps = math.floor(cfg.epochs * batches_per_epoch / cfg.gradient_accumulation)
    if steps < 1:
        raise ValueError(
            f"epochs={cfg.epochs} over {batches_per_epoch} batches with gradient_accumulation="
            f"{cfg.gradient_accumulation} is less than one optimizer step; set max_steps or more epochs"
        )
    return steps


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to ``step`` (those a resumed run does not repeat)."""
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    path.write_text("".join(line for line in lines if line.strip() and json.loads(line)["step"] <= step))


def add_gradients(params: list[torch.nn.Parameter], earlier: list[Tensor | None] | None) -> list[Tensor | None]:
    """Move the parameters' ``.grad`` into the running sum ``earlier`` (None: nothing yet) and clear them, so the
    next part of the step starts from zero."""
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    if earlier is None:
        return grads
    return [a if b is None else b if a is None else a.add_(b) for a, b in zip(earlier, grads, strict=True)]


def restore_gradients(params: list[torch.nn.Parameter], summed: list[Tensor | None]) -> None:
    for p, grad in zip(params, summed, strict=True):
        p.grad = grad


def optimizer_step(
    trainee: Trainee,
    next_batch: Callable[[], tuple[EmbeddingBatch | None, GenerativeBatch | None]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    params: list[torch.nn.Parameter],
    cfg: TrainConfig,
    d: Dist,
) -> dict[str, Any]:
    """One optimizer step over ``gradient_accumulation`` micro-batches from ``next_batch()`` (``Batches.next``
    in a run; bench/train.py passes a fixed batch); returns its log record (without the step number)."""
    start = time.perf_counter()
    accum = cfg.gradient_accumulation
    # loss_emb, loss_gen, tokens, truncated, then each distillation KL's sum and the micro-batches that had it
    sums = torch.zeros(4 + 2 * len(KL_NAMES), dtype=torch.float64)
    batches = [next_batch() for _ in range(accum)]
    # Unified: the contrastive and the next-token gradients are made one after the other, so each one's norm is
    # known (logged) and, with clip_per_loss, each is clipped on its own before they are added.
    if cfg.mode == "unified":
        parts = [[(emb, None) for emb, _ in batches], [(None, gen) for _, gen in batches]]
    else:
        parts = [batches]
    per_loss = cfg.clip_per_loss and len(parts) > 1  # clip each part, not their sum
    part_limit = cfg.max_grad_norm if per_loss else 0.0
    part_norms, earlier = [], None
    for part in parts:
        for emb, gen in part:
            m = micro_step(trainee.lm, emb, gen, cfg, d, scale=1 / accum, dtype=trainee.compute_dtype)
            cut = (emb.truncated if emb else 0) + (gen.truncated if gen else 0)
            kls = [value for name in KL_NAMES for value in (m.kls.get(name, 0.0), name in m.kls)]
            sums += torch.tensor([m.emb or 0.0, m.gen or 0.0, m.tokens, cut, *kls], dtype=torch.float64)
        all_reduce_grads(params, d)
        if len(parts) > 1:  # one part: its norm is the step's, taken below
            part_norms.append(float(torch.nn.utils.clip_grad_norm_(params, part_limit or math.inf)))
            earlier = add_gradients(params, earlier)
    if earlier is not None:
        restore_gradients(params, earlier)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, (0.0 if per_loss else cfg.max_grad_norm) or math.inf)
    lr = scheduler.get_last_lr()[0]  # the rate this step uses
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    emb_sum, gen_sum, tokens, cut, *kl_sums = all_sum(sums, d).tolist()
    loss_emb = emb_sum / (accum * d.world) if cfg.mode != "generative" else None
    loss_gen = gen_sum / (accum * d.world) if cfg.mode != "embedding" else None
    factor = cfg.loss_gen_factor if cfg.mode == "unified" else 1.0
    loss = (loss_emb or 0.0) + factor * (loss_gen or 0.0)
    return {
        "loss": loss,
        "loss_emb": loss_emb,
        "loss_gen": loss_gen,
        # each distillation KL (inside loss_gen, times its weight: data.rag_distill's, data.rag_anchor's,
        # data.chat_distill's), mean over the micro-batches that had it; None when none had
        **{
            f"kl_{name}": total / batches if batches else None
            for name, total, batches in zip(KL_NAMES, kl_sums[::2], kl_sums[1::2], strict=True)
        },  # fmt: skip
        "lr": lr,
        "grad_norm": float(grad_norm),
        "grad_norm_emb": part_norms[0] if cfg.mode == "unified" else None,
        "grad_norm_gen": part_norms[1] if cfg.mode == "unified" else None,
        "tokens": int(tokens),
        "truncated": int(cut),
        "seconds": time.perf_counter() - start,
    }


def show_progress(bar: tqdm, record: dict[str, Any], cfg: TrainConfig, total: int, main: bool) -> None:
    rate = record["tokens"] / max(record["seconds"], 1e-9)
    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{rate:.0f}", refresh=False)
    bar.update(1)
    step = record["step"]
    if main and cfg.log_every and (step % cfg.log_every == 0 or step == total):
        named = [("loss_emb", "emb"), ("loss_gen", "gen"), *((f"kl_{kl}", f"{kl} kl") for kl in KL_NAMES)]
        parts = [f"{name} {record[key]:.4f}" for key, name in named if record.get(key) is not None]
        log.info("step %d/%d loss %.4f (%s) lr %.2e %.0f tok/s", step, total, record["loss"], ", ".join(parts),
                 record["lr"], rate)  # fmt: skip


def save_final(trainee: Trainee, cfg: TrainConfig, out: Path, d: Dist, record: dict[str, Any]) -> Path:
    """``out/final``: a model folder GritModel.load opens (LoRA merged in), and ``out/adapter`` for LoRA; both
    with the run's config and ``record`` (``grit.identity.training_record``: what it trained on)."""
    target = out / FINAL

    def describe(tmp: Path) -> None:
        cfg.save(tmp)  # its ``model`` names the base (None: the default model), unlike peft's machine path
        (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")

    if d.main:
        if trainee.peft is not None:

            def fill_adapter(tmp: Path) -> None:
                trainee.save_adapter(tmp)
                describe(tmp)

            write_folder_atomically(out / ADAPTER, fill_adapter)
        lm = trainee.merged()

        def fill(tmp: Path) -> None:
            lm.save_pretrained(tmp)
            trainee.model.tokenizer.save_pretrained(tmp)
            describe(tmp)

        write_folder_atomically(target, fill)
        log.info("final model in %s", target)
    barrier(d)
    return target
