"""Fixtures of the attack tests: a tiny untrained network, a random batch, and ``trained``
(see :mod:`tests.attacks.helpers` for its recipe), trained once per session."""
from __future__ import annotations

import os

import pytest
import torch

from tests.attacks.helpers import Trained, seeded_model, train_tiny
from tests.threads import torch_threads


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    return seeded_model(0).eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.fixture(scope="session")
def trained(cifar10) -> Trained:
    with torch_threads(os.cpu_count() or 1):  # minutes of training: every core
        return train_tiny(cifar10)
