"""Fixtures of the attack tests: a tiny untrained network, a random batch, and ``trained``
(see :mod:`tests.attacks.helpers` for its recipe), trained once per session."""
from __future__ import annotations

import os

import pytest
import torch

from tests.attacks.helpers import Trained, seeded_model, train_tiny




@pytest.fixture
def tiny_model() -> torch.nn.Module:
    return seeded_model(0).eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.fixture(scope="session")
def trained(cifar10) -> Trained:
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # minutes of training: every core
    try:
        return train_tiny(cifar10)
    finally:
        torch.set_num_threads(before)
