"""Random generator states, captured and restored in one place.

``TorchRng`` is torch's CPU generator and every GPU's (what dropout and sampling draw from): GradCache replays a
chunk's dropout masks with it, and the server's gate hands it from one request to the next so that a seeded
generation repeats however it was interleaved. ``process_state`` adds Python's and numpy's generators for a training
checkpoint, as tensors and plain values only, so ``torch.load(weights_only=True)`` reads it back (no pickle).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class TorchRng:
    cpu: torch.Tensor
    cuda: list[torch.Tensor]

    @classmethod
    def capture(cls) -> TorchRng:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)


def process_state() -> dict[str, Any]:
    """This process's Python, numpy and torch generator states (tensors, ints, floats and strings only)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    torch_rng = TorchRng.capture()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },  # fmt: skip
        "torch": torch_rng.cpu,
    }
    if torch_rng.cuda:
        state["cuda"] = torch_rng.cuda
    return state


def restore_process_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    cuda = state.get("cuda", []) if torch.cuda.is_available() else []
    TorchRng(state["torch"], cuda).restore()
