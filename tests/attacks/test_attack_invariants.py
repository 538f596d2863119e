"""Invariants of a robustness evaluation, on the tiny network trained on CIFAR-10 (see helpers.py)."""
from __future__ import annotations

import pytest
import torch

from stable_snn.attacks import PGD, WORST_CASE, evaluate_protocol
from tests.attacks.helpers import predictions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # trains a model (once per session)

N = 64


@pytest.fixture(scope="module")
def table1(trained):
    return evaluate_protocol(trained.model, trained.images[:N], trained.labels[:N], "paper-table1", batch_size=32,
                             generator_seed=0)


def test_trained_model_is_a_real_classifier(trained):
    assert trained.clean_accuracy >= 0.25, "the tiny training recipe should beat chance clearly"


def test_robust_at_most_clean_for_every_attack(table1):
    acc = table1.accuracies
    assert acc["clean"] >= 0.25
    for name, value in acc.items():
        assert value <= acc["clean"], name
    assert acc["pgd-10"] < acc["clean"], "PGD-10 at 8/255 must hurt an undefended network"


def test_worst_case_at_most_each_attack(table1):
    worst = table1.rows[WORST_CASE].correct
    for name, row in table1.rows.items():
        assert not (worst & ~row.correct).any(), name
    assert table1.accuracies[WORST_CASE] == min(table1.accuracies.values())


def test_more_pgd_steps_never_help_beyond_noise(trained):
    """Same samples, same seed (same random start), step 2/255: accuracy must not rise by more than a sample."""
    x, y = trained.images[:N], trained.labels[:N]
    accs = []
    for steps in (1, 3, 10):
        adv = PGD(eps=8 / 255, alpha=2 / 255, steps=steps)(trained.model, x, y, torch.Generator().manual_seed(0))
        accs.append((predictions(trained.model, adv) == y).float().mean().item())
    for fewer, more in zip(accs, accs[1:]):
        assert more <= fewer + 1.5 / N, accs
    assert accs[-1] < accs[0] or accs[0] == 0
