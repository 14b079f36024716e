"""One micro-batch of GRIT training: forward passes, losses and backward passes.

    unified loss = contrastive_loss(embedding batch) + loss_gen_factor * next_token_loss(generative batch)

(GritLM, Muennighoff et al. 2024, eq. 3), each on its own batch. The two parts are backpropagated one after the
other, so the embedding activations are freed before the generative forward; the gradients add up to those of the
sum, and the trainer takes one optimizer step for both.

Embedding: ``hidden_states`` of ``lm.base_model`` with bidirectional (or causal) attention, pooled over the text
tokens (instruction and padding left out) and L2-normalised: the same path as ``GritModel.encode``. Generation: the
causal LM's next-token loss on the assistant tokens, with the LM head run on those positions only
(``next_token_loss_from_states``; same value as ``next_token_loss`` over the full logits).

Across processes (grit/train/distributed.py) each process backpropagates a loss whose gradient, averaged over the
processes, is the gradient of the loss of the whole global batch:

- contrastive: queries and passages of all processes are gathered, and every process computes the same loss;
- next-token: this process's summed token losses, divided by a count over all processes (trained tokens for
  ``loss_gen_type="mixed"``, sequences for ``"token"``) and multiplied by the world size. So "mixed" is the mean
  over every trained token of the global micro-batch, whatever the number of processes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from grit.attention import hidden_states
from grit.packing import packed_hidden_states, segment_mask
from grit.pooling import Pooling, pool

from .collate import EmbeddingBatch, GenerativeBatch
from .config import TrainConfig
from .distributed import Dist, all_sum, gather
from .gradcache import gradcache_backward
from .losses import IGNORE, contrastive_loss, next_token_loss, next_token_loss_from_states, trained_tokens


@dataclass
class MicroLosses:
    """What one micro-batch gave on this process. Averaged over processes, ``emb`` and ``gen`` are the losses of
    the global micro-batch (``emb`` is the same on every process)."""

    emb: float | None
    gen: float | None
    tokens: int  # real (non-pad) tokens of this process's inputs
    kls: dict[str, float] = field(default_factory=dict)  # the distillation KLs inside ``gen`` (``Kls``'s, by name)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward passes when the compute dtype is not float32 (weights stay float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def embed(base_model: torch.nn.Module, ids: Tensor, padding: Tensor, text: Tensor, pooling: Pooling,
          bidirectional: bool, packed: bool = False) -> Tensor:  # fmt: skip
    """(n, T) inputs → (n, H) normalised float32 embeddings, as ``GritModel.encode`` computes them; ``packed``
    computes the same with several texts per row (``grit.packing``), so padding costs nothing."""
    forward = packed_hidden_states if packed else hidden_states
    states = forward(base_model, ids, padding, bidirectional)  # (n, T, H)
    return F.normalize(pool(states, text, pooling), dim=-1)  # (n, H)


def contrastive(q: Tensor, p: Tensor, emb: EmbeddingBatch, cfg: TrainConfig, d: Dist) -> Tensor:
    """The global batch's InfoNCE from this process's (b, H) queries and (b*G, H) passages of ``emb``."""
    keys = None if emb.passage_keys is None else gather(emb.passage_keys.to(p.device), d)
    return contrastive_loss(gather(q, d), gather(p, d), cfg.temperature, cfg.symmetric,
                            group_size=emb.group_size, passage_keys=keys)  # fmt: skip


def head_is_plain(lm: torch.nn.Module) -> bool:
    """Whether the model's logits are just ``lm_head(last hidden state)``, so the head may run on the trained
    positions alone. Models that scale or soft-cap their logits (Gemma 2, Cohere, ...) take the full path."""
    config = lm.config
    extra = any(getattr(config, a, None) not in (None, 1.0) for a in ("final_logit_softcapping", "logit_scale"))
    return not extra and lm.get_output_embeddings() is not None and hasattr(lm, "get_decoder")


def generative(lm: torch.nn.Module, batch: GenerativeBatch, cfg: TrainConfig, d: Dist) -> tuple[Tensor, Kls]:
    """Next-token loss of this process's share of the global batch, times the world size (see module doc), plus
    the distillation terms (``data.rag_distill``, ``data.rag_anchor`` and ``data.chat_distill`` times their KLs);
    and those KLs alone, to log."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if batch.segments is not None:  # packed rows: each conversation attends causally to itself, from position 0;
        # a cache-aware row's documents each attend only to themselves, as they were cached (batch.blocks)
        mask = segment_mask(batch.segments, True, lm.dtype, batch.blocks)
        inputs |= {"attention_mask": mask, "position_ids": batch.positions}
    data = cfg.data
    rag = batch.blocks is not None
    tail = rag_tail(batch) if rag and (data.rag_distill or data.rag_anchor or not data.rag_answer_loss) else None
    chat = chat_answers(batch) if data.chat_distill or not data.chat_answer_loss else None
    labels = batch.labels
    if rag and not data.rag_answer_loss:  # trained by the KL alone
        labels = labels.masked_fill(tail, IGNORE)
    if not data.chat_answer_loss:
        labels = labels.masked_fill(chat, IGNORE)
    terms = {}  # a position's logits predict the next token
    if rag and data.rag_distill:
        terms["rag"] = Term(data.rag_distill, tail, TEACHER if data.rag_teacher == "start" else None)
    if rag and data.rag_anchor:
        terms["anchor"] = Term(data.rag_anchor, tail, TEACHER, student_reads_full=True)
    if data.chat_distill:
        terms["chat"] = Term(data.chat_distill, predicting(chat), TEACHER)
    own = {name: t.where for name, t in terms.items() if not t.student_reads_full}  # read by the loss's pass
    full = {name: t.where for name, t in terms.items() if t.student_reads_full}
    if head_is_plain(lm):
        states = lm.get_decoder()(**inputs).last_hidden_state
        total = next_token_loss_from_states(states, lm.get_output_embeddings(), labels, "sum")
        students = {name: lm.get_output_embeddings()(states[where]) for name, where in own.items()}
    else:
        logits = lm(**inputs).logits  # (R, W, V)
        total = next_token_loss(logits, labels, "sum")
        students = {name: logits[where] for name, where in own.items()}
    if full:  # the rows read in one causal pass by the trained model, with gradient
        students |= full_reading(lm, batch, inputs, full)
    if cfg.loss_gen_type == "mixed":
        count = all_sum(trained_tokens(labels).float(), d).clamp(min=1)
    else:
        count = batch.sequences * d.world
    loss = total * d.world / count
    kls = distillation(lm, batch, inputs, students, terms, d)
    for name, kl in kls.items():
        loss = loss + terms[name].weight * kl
    return loss, Kls(**{name: kl.detach() for name, kl in kls.items()})


@dataclass
class Term:
    """One distillation term of ``generative``: its weight, the positions it reads, the teacher's adapter (None: the
    model itself), and whether its student is a ``full_reading`` of its own rather than the loss's pass."""

    weight: float
    where: Tensor
    teacher: str | None
    student_reads_full: bool = False


@dataclass
class Kls:
    """The distillation KLs of a generative batch (None: the term is off, or the batch had no such rows)."""

    rag: Tensor | None = None
    anchor: Tensor | None = None
    chat: Tensor | None = None


TEACHER = "teacher"  # the frozen starting adapter (DataConfig.keeps_start; grit.train.build adds it)


@contextlib.contextmanager
def reading_with(lm: torch.nn.Module, adapter: str | None):
    """Inside the block, ``lm``'s LoRA layers read with ``adapter`` (None: as they are); then with the ones they had.
    peft's layer ``set_adapter`` also sets which adapter's weights require gradients: the trained ones get theirs
    back on the way out (the teacher's pass runs without gradient; the student's graph was built before it)."""
    if adapter is None:
        yield
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in lm.modules() if isinstance(m, BaseTunerLayer)]
    trained = list(layers[0].active_adapters)
    for layer in layers:
        layer.set_adapter(adapter, inference_mode=True)
    try:
        yield
    finally:
        for layer in layers:
            layer.set_adapter(trained)


def cache_aware_rows(batch: GenerativeBatch) -> Tensor:
    """(R, W) bool: every token of the cache-aware rows (the conversations that have document blocks)."""
    if batch.blocks is None:
        return torch.zeros_like(batch.labels, dtype=torch.bool)
    in_block = (batch.blocks != 0).long()
    has_blocks = torch.zeros((batch.segments.shape[0], int(batch.segments.max()) + 1), dtype=torch.long,
                             device=in_block.device).scatter_reduce(1, batch.segments, in_block, "amax")  # fmt: skip
    return has_blocks.gather(1, batch.segments).bool() & (batch.segments > 0)


def rag_tail(batch: GenerativeBatch) -> Tensor:
    """(R, W) bool: the question and answer tokens of cache-aware rows (outside their documents' blocks)."""
    return cache_aware_rows(batch) & (batch.blocks == 0)


def chat_answers(batch: GenerativeBatch) -> Tensor:
    """(R, W) bool: the labelled (answer) tokens of the chat rows, the rows that are not cache-aware."""
    return (batch.labels != IGNORE) & ~cache_aware_rows(batch)


def predicting(tokens: Tensor) -> Tensor:
    """(R, W) bool: the positions whose logits predict one of ``tokens`` (the position before each)."""
    return F.pad(tokens[:, 1:], (0, 1), value=False)


def full_reading(lm: torch.nn.Module, batch: GenerativeBatch, inputs: dict,
                 where: dict[str, Tensor]) -> dict[str, Tensor]:  # fmt: skip
    """The logits at each of ``where``'s positions of one causal pass over every row: the cache-aware rows'
    documents, question and answer read together, as a full prefill (and cache="none") reads them."""
    options = inputs  # padded rows (no packing) have no blocks: the loss's pass is already a full reading
    if batch.segments is not None:
        options = inputs | {"attention_mask": segment_mask(batch.segments, True, lm.dtype)}
    if head_is_plain(lm):
        states = lm.get_decoder()(**options).last_hidden_state
        return {name: lm.get_output_embeddings()(states[positions]) for name, positions in where.items()}
    logits = lm(**options).logits
    return {name: logits[positions] for name, positions in where.items()}


def distillation(lm: torch.nn.Module, batch: GenerativeBatch, inputs: dict, students: dict[str, Tensor],
                 terms: dict[str, Term], d: Dist) -> dict[str, Tensor]:  # fmt: skip
    """Per term, the mean KL(teacher || student) of the next-token distributions at its positions: ``students``
    holds the trained model's logits there; the teacher is a ``full_reading`` without gradient, by the model itself
    (``Term.teacher`` None) or with that LoRA adapter (``TEACHER``: the model as the run started).
    Terms with the same teacher share its pass. The terms: the cache-aware rows' (``data.rag_distill``, at
    ``rag_tail``, the student being the loss's block-masked pass) is what bench/rag_closeness.py measures, as a
    loss; ``data.rag_anchor`` holds those rows' full reading where it started (its student is a ``full_reading``
    with gradient); the chats' (``data.chat_distill``) holds their answers where they started."""
    kls = {}
    for adapter in dict.fromkeys(t.teacher for t in terms.values()):
        names = [name for name, t in terms.items() if t.teacher == adapter]
        with torch.no_grad(), reading_with(lm, adapter):
            teachers = full_reading(lm, batch, inputs, {name: terms[name].where for name in names})
        for name in names:
            count = all_sum(terms[name].where.sum().float(), d).clamp(min=1)
            teacher = F.log_softmax(teachers[name].float(), -1)
            total = F.kl_div(F.log_softmax(students[name].float(), -1), teacher, log_target=True, reduction="sum")
            kls[name] = total * d.world / count
    return kls


def micro_step(
    lm: torch.nn.Module,
    emb: EmbeddingBatch | None,
    gen: GenerativeBatch | None,
    cfg: TrainConfig,
    d: Dist,
    *,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> MicroLosses:
    """Forward and backward of one micro-batch: adds the gradient of ``scale * loss`` to the parameters' ``.grad``.

    ``emb`` and ``gen`` are this process's shards (on the model's device); either may be None (one-loss modes).
    ``scale`` is 1 / gradient_accumulation.
    """
    device = next(lm.parameters()).device
    loss_emb = loss_gen = None
    kls = Kls()
    tokens = 0
    if emb is not None:
        tokens += int(emb.query_padding.sum() + emb.passage_padding.sum())

        def encode(ids: Tensor, padding: Tensor, text: Tensor) -> Tensor:
            with autocast(device, dtype):
                return embed(lm.base_model, ids, padding, text, cfg.pooling, cfg.attention == "bidirectional",
                             packed=cfg.data.pack)  # fmt: skip

        def loss_fn(q: Tensor, p: Tensor) -> Tensor:
            return contrastive(q, p, emb, cfg, d)

        queries = (emb.query_ids, emb.query_padding, emb.query_text)
        passages = (emb.passage_ids, emb.passage_padding, emb.passage_text)
        if cfg.gradcache_chunk_size:
            loss = gradcache_backward(encode, [queries, passages], loss_fn, cfg.gradcache_chunk_size, scale)
        else:
            loss = loss_fn(encode(*queries), encode(*passages))
            (loss * scale).backward()
        loss_emb = loss.item()
    if gen is not None:
        tokens += int(gen.attention_mask.sum())
        with autocast(device, dtype):
            loss, kls = generative(lm, gen, cfg, d)
        factor = cfg.loss_gen_factor if cfg.mode == "unified" else 1.0
        (loss * (factor * scale)).backward()
        loss_gen = loss.item()
    measured = {name: kl.item() for name, kl in vars(kls).items() if kl is not None}
    return MicroLosses(loss_emb, loss_gen, tokens, measured)
