"""Gradient-obfuscation checks: flags from per-row results, zero-gradient detection."""
from __future__ import annotations

import pytest
import torch

from stable_snn.attacks import BeatsReference, FallsToZero, RowResult, ZeroGradients, noise_margin, zero_gradient_mask


def row(name, correct, indices=None):
    correct = torch.tensor(correct, dtype=torch.bool)
    idx = torch.arange(len(correct)) if indices is None else torch.tensor(indices)
    return RowResult(name, idx, correct, torch.zeros(len(correct), dtype=torch.long))


def test_noise_margin():
    assert noise_margin(100, 0.5) == pytest.approx(0.05)
    assert noise_margin(10**6, 0.5) == 0.005  # the floor
    assert noise_margin(100, 0.0) == 0.005
    with pytest.raises(ValueError):
        noise_margin(0, 0.5)


def test_black_box_beating_white_box_is_flagged_on_shared_samples():
    pgd = row("pgd-10", [True] * 60 + [False] * 40)  # 60 %
    # Square ran on the first 50 samples only: PGD-10 has 100 % there, Square 40 %
    square = row("square", [True] * 20 + [False] * 30, indices=list(range(50)))
    flag = BeatsReference("bb", "pgd-10", ("square",))({"pgd-10": pgd, "square": square})
    assert flag.raised and flag.value == pytest.approx(0.6)
    same = row("square", [True] * 50, indices=list(range(50)))
    assert not BeatsReference("bb", "pgd-10", ("square",))({"pgd-10": pgd, "square": same}).raised


def test_difference_within_noise_is_not_flagged():
    pgd = row("pgd-10", [True] * 50 + [False] * 50)
    other = row("w2", [True] * 47 + [False] * 53)  # 3 points lower, margin 5 points
    flag = BeatsReference("sw", "pgd-10", ("w2",))({"pgd-10": pgd, "w2": other})
    assert not flag.raised and flag.value == pytest.approx(0.03) and flag.threshold == pytest.approx(0.05)


def test_the_strongest_candidate_is_reported():
    pgd = row("pgd-10", [True] * 50 + [False] * 50)
    rows = {"pgd-10": pgd, "a": row("a", [True] * 49 + [False] * 51), "b": row("b", [True] * 20 + [False] * 80)}
    flag = BeatsReference("sw", "pgd-10", ("a", "b"))(rows)
    assert flag.raised and flag.message.startswith("b 20.00% vs pgd-10 50.00%")


def test_falls_to_zero():
    rows = {"big": row("big", [True] * 2 + [False] * 98)}
    assert not FallsToZero("z", "big", 0.05)(rows).raised
    rows = {"big": row("big", [True] * 10 + [False] * 90)}
    assert FallsToZero("z", "big", 0.05)(rows).raised


def test_zero_gradients_flag():
    assert not ZeroGradients()({}, torch.zeros(10, dtype=torch.bool)).raised
    flag = ZeroGradients()({}, torch.tensor([True] + [False] * 9))
    assert flag.raised and flag.value == pytest.approx(0.1)
    with pytest.raises(ValueError, match="zero-gradient"):
        ZeroGradients()({}, None)


def test_zero_gradient_mask(tiny_model, batch):
    x, y = batch
    mask = zero_gradient_mask(tiny_model, x, y)
    assert mask.dtype == torch.bool and mask.shape == (8,)
    assert all(p.grad is None for p in tiny_model.parameters())
    with torch.no_grad():
        tiny_model.head.weight.zero_()  # logits no longer depend on the input
    assert zero_gradient_mask(tiny_model, x, y).all()


@pytest.mark.slow  # trains a model
def test_trained_model_has_informative_gradients(trained):
    assert zero_gradient_mask(trained.model, trained.images[:32], trained.labels[:32]).float().mean() == 0
