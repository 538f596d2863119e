"""Our FGSM, PGD and APGD-CE against torchattacks 3.3.0 on the same model and samples (within 2 points).

torchattacks draws its random starts from the global RNG (and APGD reseeds it), so its calls
run inside ``torch.random.fork_rng`` with a fixed seed: the suite's RNG state is left as it was.
Seeding the global RNG with the seed of our generator gives torchattacks' PGD the same uniform
start as ours (``uniform_(-eps, eps)`` and ``(2 * rand - 1) * eps`` draw the same numbers; on an
untrained network the two PGDs then agree to 1e-9). On the trained network these last-bit
differences (``x + clamp(adv - x)`` against ``clamp(adv)``) flip spikes and the trajectories part,
so single runs differ by a few samples of 128; robust accuracies are therefore averaged over
three seeds for the random attacks. APGD's start is normalised differently in torchattacks and
its checkpoints follow the AutoAttack code rather than the paper's fractions.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stable_snn.attacks import APGD, FGSM, PGD
from tests.attacks.helpers import predictions

torchattacks = pytest.importorskip("torchattacks")

pytestmark = pytest.mark.slow  # trains a model (once per session)

TOLERANCE = 0.02


class MeanLogits(nn.Module):
    """What torchattacks expects: ``[B, C]`` logits (the spiking ``[T, B, C]`` averaged over T)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).mean(0)


def _theirs(make, model, x, y, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        attack = make(MeanLogits(model).eval())
        return attack(x, y)


def _acc(model, adv, y):
    return (predictions(model, adv) == y).float().mean().item()


PAIRS = {
    "fgsm": (lambda: FGSM(eps=8 / 255), lambda m, seed: torchattacks.FGSM(m, eps=8 / 255)),
    "pgd-10": (lambda: PGD(eps=8 / 255, alpha=2 / 255, steps=10),
               lambda m, seed: torchattacks.PGD(m, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)),
    "apgd-ce": (lambda: APGD(eps=8 / 255, steps=10, n_restarts=1, rho=0.75, loss="ce"),
                lambda m, seed: torchattacks.APGD(m, norm="Linf", eps=8 / 255, steps=10, n_restarts=1, seed=seed,
                                                  loss="ce", rho=0.75)),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_agrees_with_torchattacks(name, trained):
    model, x, y = trained.model, trained.images, trained.labels
    make_ours, make_theirs = PAIRS[name]
    seeds = [0] if name == "fgsm" else [0, 1, 2]
    ours_acc, theirs_acc = [], []
    for seed in seeds:
        ours = make_ours()(model, x, y, torch.Generator().manual_seed(seed))
        theirs = _theirs(lambda m: make_theirs(m, seed), model, x, y, seed)
        assert (theirs - x).abs().max() <= 8 / 255 + 1e-6
        ours_acc.append(_acc(model, ours, y))
        theirs_acc.append(_acc(model, theirs, y))
        if name == "fgsm":  # deterministic: the same images
            assert torch.allclose(ours, theirs, atol=1e-6)
    a, b = sum(ours_acc) / len(seeds), sum(theirs_acc) / len(seeds)
    assert abs(a - b) <= TOLERANCE, f"{name}: ours {ours_acc}, torchattacks {theirs_acc}"
    assert a < _acc(model, x, y)


def test_pgd_without_random_start_is_identical(trained):
    model, x, y = trained.model, trained.images[:32], trained.labels[:32]
    ours = PGD(eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)(model, x, y)
    theirs = _theirs(lambda m: torchattacks.PGD(m, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False),
                     model, x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)
