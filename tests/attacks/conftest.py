"""Fixtures of the attack tests: a tiny untrained network, a random batch, and ``trained``
(see :mod:`tests.attacks.helpers` for its recipe), trained once per session."""
from __future__ import annotations

import pytest
import torch

from tests.attacks.helpers import Trained, seeded_model, train_tiny
from tests.threads import torch_threads

# A fixed thread count, not the machine's cores: the trained weights (and every threshold the
# attack tests set on them) must not move with the number of cores of the machine running the suite.
TRAIN_THREADS = 2


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    """Untrained, with a threshold at which every layer spikes in eval mode (at the default threshold
    this network is silent, its output constant and every input gradient zero)."""
    return seeded_model(0, threshold=0.5).eval()


@pytest.fixture
def batch(tiny_model) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images labelled with ``tiny_model``'s own predictions, so that every attack starts
    from correctly classified inputs and has something to do."""
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, tiny_model(x).mean(0).argmax(1)


@pytest.fixture(scope="session")
def trained(cifar10) -> Trained:
    with torch_threads(TRAIN_THREADS):
        return train_tiny(cifar10)
