"""Fixtures for the training tests: one thread, and the small data files of trainutil written once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .trainutil import write_data


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's matrices are too small for threads to help, and on a busy 2-core machine OpenMP threads
    waiting for each other made its steps 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> tuple[Path, Path]:
    """(contrastive file, generative file) of trainutil's rows."""
    return write_data(tmp_path_factory.mktemp("train-data"))
