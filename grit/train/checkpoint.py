"""Checkpoints that resume: everything the loop needs to continue as if it had never stopped.

    output_dir/checkpoint-<step>/
        config.json, model.safetensors, tokenizer files   full fine-tune: a model folder GritModel.load opens
        adapter/                                          LoRA: the peft adapter (the base weights do not change)
        optimizer.pt, scheduler.pt                        AdamW moments and step counts, LR schedule position
        rng.pt                                            python, numpy and torch RNG states of every process
        trainer_state.json                                step, sampler positions, world size

A checkpoint is written into a temporary folder and renamed into place (``grit.loading.write_folder_atomically``),
so a run killed while saving leaves the previous one as the newest complete checkpoint. The newest ``keep`` are
kept. Restarting the same command finds the newest and continues from it; the samplers' state and the RNG states
make the rest of the run repeat the uninterrupted one (tests/train/test_resume.py).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from grit.loading import recover_folders, write_folder_atomically
from grit.rng import process_state, restore_process_state

from .build import Trainee
from .distributed import Dist, barrier, gather_objects

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (temporary ``.tmp-*`` folders are not listed)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    recover_folders(folder)
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(rf"{PREFIX}\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def latest(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def save(
    output_dir: Path,
    step: int,
    trainee: Trainee,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
    d: Dist,
) -> Path:
    """Write ``output_dir/checkpoint-<step>`` (rank 0 writes; every process must call this)."""
    target = output_dir / f"{PREFIX}{step}"
    rng = gather_objects(process_state(), d)  # a collective: every process takes part
    if d.main:

        def fill(tmp: Path) -> None:
            trainee.save_weights(tmp)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rng, tmp / "rng.pt")
            (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "world": d.world}, indent=2) + "\n")

        write_folder_atomically(target, fill)
        prune(output_dir, keep)
        log.info("saved %s", target)
    barrier(d)
    return target


def prune(output_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (0 keeps all)."""
    if keep:
        for old in checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def load(folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any, d: Dist) -> dict[str, Any]:
    """Restore optimizer, scheduler and this process's RNG from ``folder``; returns the trainer state (the model
    weights are loaded when the model is built, see ``build_model``)."""
    state = json.loads((folder / STATE_FILE).read_text())
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=d.device, weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = read_rng(folder / "rng.pt")
    if rng is None:  # data order is still exact (sampler state); only dropout masks differ from an uninterrupted run
        log.warning("%s: its RNG states cannot be read without running pickled code; RNG not restored", folder)
    elif len(rng) == d.world:
        restore_process_state(rng[d.rank])
    else:
        log.warning("%s was saved by %d processes, this run has %d: RNG not restored", folder, len(rng), d.world)
    return state


def read_rng(path: Path) -> list[dict[str, Any]] | None:
    """Every process's RNG states, read with ``weights_only=True`` (tensors and plain values, never code). None for
    a file that needs more (a crafted one, or one from a grit that pickled numpy's state): it is not run."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        log.warning("refusing to unpickle %s: %s", path, str(e).strip().splitlines()[0])
        return None
