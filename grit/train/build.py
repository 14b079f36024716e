"""What a run trains and how: the model (all weights, or LoRA adapters through peft), AdamW, the LR schedule.

Full fine-tuning keeps float32 weights and runs the forward passes under autocast when the compute dtype (``dtype``,
resolved by grit.hardware: "auto" is bfloat16 on GPUs and AMX/AVX512-BF16 CPUs, float32 elsewhere) is lower: Adam's
small updates are lost in bf16 weights. LoRA loads the frozen base in the compute dtype and peft keeps the adapters
in float32.

LoRA layers are injected into ``model.lm`` in place, so the training forward passes call ``lm.base_model`` and ``lm``
as ``GritModel`` does; the ``PeftModel`` wrapper is kept only to save the adapter and to merge it at the end.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from grit.hardware import DTYPES, Placement
from grit.identity import ModelIdentity
from grit.loading import resolve_model_path
from grit.model import GritModel

from .config import LoraConfig, TrainConfig
from .distributed import Dist, broadcast_params
from .step import TEACHER

log = logging.getLogger(__name__)

ADAPTER = "adapter"  # folder of a LoRA adapter, inside a checkpoint and inside output_dir
TRAINED = "default"  # peft's name of the adapter a run trains


@dataclass
class Trainee:
    """The model being trained and the parts needed to save it."""

    model: GritModel
    peft: torch.nn.Module | None  # the PeftModel around model.lm (LoRA), else None
    compute_dtype: torch.dtype
    base: ModelIdentity  # the model training started from (a resumed full fine-tune loads a checkpoint instead)

    @property
    def lm(self) -> torch.nn.Module:
        return self.model.lm

    def named_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The parameters the optimizer updates, in a fixed order (optimizer state is saved by position)."""
        return [(n, p) for n, p in self.lm.named_parameters() if p.requires_grad]

    def save_weights(self, folder: Path) -> None:
        """Into a checkpoint: a model folder GritModel.load opens (full), or the adapter alone (LoRA)."""
        if self.peft is not None:
            self.save_adapter(folder / ADAPTER)
        else:
            self.lm.save_pretrained(folder)
            self.model.tokenizer.save_pretrained(folder)

    def save_adapter(self, folder: Path) -> None:
        """The trained LoRA adapter alone (the frozen teacher adapter, ``DataConfig.keeps_start``, is not saved)."""
        self.peft.save_pretrained(folder, selected_adapters=[TRAINED])

    def merged(self) -> torch.nn.Module:
        """The causal LM with the adapters added into its weights (LoRA; after this the adapters are gone), or the
        trained LM itself, in the compute dtype."""
        if self.peft is None:
            return self.lm.to(self.compute_dtype)
        if TEACHER in self.peft.peft_config:
            self.peft.delete_adapter(TEACHER)
        return self.peft.merge_and_unload().to(self.compute_dtype)


def peft_config(cfg: LoraConfig, dropout: float | None = None):
    """peft's LoraConfig for ``cfg`` (``dropout`` in place of ``cfg.dropout`` when given)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout if dropout is None else dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )


def add_lora(lm: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """Wrap ``lm`` with fresh LoRA adapters (A random, B zero: the model starts unchanged); the rest is frozen."""
    from peft import get_peft_model

    return get_peft_model(lm, peft_config(cfg))


def add_teacher(peft_model: torch.nn.Module, cfg: LoraConfig) -> None:
    """A second, frozen adapter named ``TEACHER``: the model as the run starts (``cfg.init_from``'s adapter, or a
    fresh one, whose B = 0 leaves the base unchanged), without dropout; the distillation terms that need the
    starting model (``DataConfig.keeps_start``) read it."""
    peft_model.add_adapter(TEACHER, peft_config(cfg, dropout=0.0))
    if cfg.init_from is not None:
        load_adapter_weights(peft_model, Path(cfg.init_from), TEACHER)
    peft_model.set_adapter(TRAINED)  # the trained adapter stays the active one, and the only one with gradients
    for name, param in peft_model.named_parameters():
        if f".{TEACHER}." in name:
            param.requires_grad_(False)


def load_adapter_weights(peft_model: torch.nn.Module, folder: Path, adapter: str = TRAINED) -> None:
    """Put the adapter weights saved in ``folder`` into ``peft_model``'s ``adapter`` (of the same shape)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(folder / "adapter_model.safetensors", device=str(next(peft_model.parameters()).device))
    result = set_peft_model_state_dict(peft_model, state, adapter_name=adapter)
    if result.unexpected_keys:
        raise ValueError(f"{folder}: adapter weights do not fit the model: {result.unexpected_keys[:3]}")


def check_init_adapter(folder: Path, cfg: TrainConfig) -> Path:
    """``folder`` if it holds an adapter that continues on this run's base with this run's adapter shape."""
    import json

    from grit.identity import SavedSettings

    config_file = folder / "adapter_config.json"
    if not config_file.is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise ValueError(f"lora.init_from: {folder} holds no LoRA adapter (adapter_config.json and weights)")
    saved = json.loads(config_file.read_text())
    theirs = {
        "r": saved.get("r"),
        "alpha": saved.get("lora_alpha"),
        "target_modules": sorted(saved.get("target_modules", [])),
    }
    ours = {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "target_modules": sorted(cfg.lora.target_modules)}
    for key, value in ours.items():
        if theirs[key] != value:
            raise ValueError(f"lora.init_from: {folder} has {key}={theirs[key]}, this run lora.{key}={value}")
    settings = SavedSettings.read(folder)
    if settings is None or not settings.trained:
        raise ValueError(
            f"lora.init_from: {folder} was not written by grit train (no train_config.json): its base is unknown"
        )
    if resolve_model_path(settings.base).resolve() != resolve_model_path(cfg.model).resolve():
        raise ValueError(
            f"lora.init_from: {folder} adapts {settings.base or 'the default model'}, this run trains "
            f"{cfg.model or 'the default model'}"
        )
    return folder


def build_model(cfg: TrainConfig, d: Dist, checkpoint: Path | None = None) -> Trainee:
    """Load ``cfg.model`` (or, for a full fine-tune, the checkpoint's weights) in training mode, equal on every
    process. ``cfg`` is resolved (``TrainConfig.resolved``): its device and dtype are concrete."""
    compute = DTYPES[cfg.dtype]
    options = {"pooling": cfg.pooling, "bidirectional": cfg.attention == "bidirectional"}
    if cfg.lora.enabled:
        placement = Placement(d.device, compute, cfg.threads)
        model = GritModel.load(cfg.model, base_only=True, placement=placement, **options)
        peft_model = add_lora(model.lm, cfg.lora)
        if checkpoint is not None:
            load_adapter_weights(peft_model, checkpoint / ADAPTER)
        elif cfg.lora.init_from is not None:
            load_adapter_weights(peft_model, check_init_adapter(Path(cfg.lora.init_from), cfg))
            log.info("adapters start from %s", cfg.lora.init_from)
        if cfg.data.keeps_start:
            add_teacher(peft_model, cfg.lora)
        base = model.identity
    else:  # float32 weights, autocast to the compute dtype (module docstring)
        placement = Placement(d.device, torch.float32, cfg.threads)
        model = GritModel.load(checkpoint or cfg.model, base_only=True, placement=placement, **options)
        peft_model = None
        base = model.identity if checkpoint is None else ModelIdentity.of(resolve_model_path(cfg.model))
    model.lm.train()
    trainee = Trainee(model, peft_model, compute, base)
    params = [p for _, p in trainee.named_params()]
    broadcast_params(params, d)
    total = sum(p.numel() for p in model.lm.parameters())
    trained = sum(p.numel() for p in params)
    log.info("training %.1fM of %.1fM parameters (%s), compute dtype %s", trained / 1e6, total / 1e6,
             "LoRA" if peft_model is not None else "full", cfg.dtype)  # fmt: skip
    return trainee


def build_optimizer(trainee: Trainee, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases and norm scales are not decayed, as in transformers)."""
    named = trainee.named_params()
    groups = [
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Linear warm-up to ``cfg.lr``, then linear or cosine decay to 0, or constant."""
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup_steps(cfg, total_steps), num_training_steps=total_steps
    )
