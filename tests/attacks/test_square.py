"""Square attack (Andriushchenko et al. 2020): schedule, margin loss, query budget, gradient-free."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stable_snn.attacks import PGD, Square, margin_loss
from stable_snn.attacks.square import p_selection
from tests.attacks.test_apgd import SmoothNet


@pytest.mark.parametrize("it, expected", [
    (0, 0.8), (10, 0.8), (11, 0.4), (50, 0.4), (51, 0.2), (200, 0.2), (201, 0.1), (500, 0.1), (501, 0.05),
    (1001, 0.025), (2001, 0.0125), (4001, 0.8 / 128), (6001, 0.8 / 256), (8001, 0.8 / 512), (9999, 0.8 / 512),
])
def test_p_schedule_of_the_paper(it, expected):
    assert p_selection(0.8, it, 10000) == pytest.approx(expected)


def test_p_schedule_rescaled_to_the_query_budget():
    assert p_selection(0.8, 1, 1000) == 0.8  # 10 of 10,000
    assert p_selection(0.8, 2, 1000) == 0.4  # 20 of 10,000
    assert p_selection(0.8, 999, 1000) == pytest.approx(0.8 / 512)


def test_margin_loss():
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert torch.equal(margin_loss(z, torch.tensor([0, 0])), torch.tensor([1.0, -5.0]))


class Counting(nn.Module):
    """Wraps a model; counts the samples it sees and whether gradients were enabled."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.samples = 0
        self.grad_calls = 0

    def forward(self, x):
        self.samples += x.shape[0]
        self.grad_calls += int(torch.is_grad_enabled())
        return self.model(x)


class Constant(nn.Module):
    """Always predicts class 0: nothing can fool it on label 0."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([5.0, 0.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 3) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_query_budget_is_exact_and_gradient_free():
    model = Counting(Constant())
    x, y = torch.rand(5, 3, 8, 8), torch.zeros(5, dtype=torch.long)
    Square(eps=0.1, n_queries=30)(model, x, y, torch.Generator().manual_seed(0))
    assert model.samples == 5 + 5 * 30  # the clean check, then n_queries per sample (the start counts)
    assert model.grad_calls == 0


def test_fooled_samples_stop_querying():
    model = Counting(SmoothNet())
    x = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model.model(x).argmax(1)
    Square(eps=0.3, n_queries=200)(model, x, y, torch.Generator().manual_seed(0))
    assert model.samples < 16 + 16 * 200


def test_breaks_an_easy_model_like_pgd():
    model = SmoothNet()
    x = torch.rand(32, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = Square(eps=0.2, n_queries=300)(model, x, y, torch.Generator().manual_seed(0))
    pgd = PGD(eps=0.2, alpha=0.05, steps=20)(model, x, y, torch.Generator().manual_seed(0))
    with torch.no_grad():
        square_acc = (model(adv).argmax(1) == y).float().mean().item()
        pgd_acc = (model(pgd).argmax(1) == y).float().mean().item()
    assert square_acc <= 0.5
    assert square_acc <= pgd_acc + 0.25


def test_initial_point_is_vertical_stripes():
    """With one query, the output is the start: +-eps per (channel, column), constant down each column."""
    x = torch.full((2, 3, 8, 8), 0.5)
    adv = Square(eps=0.1, n_queries=1)(Constant(), x, torch.tensor([0, 0]), torch.Generator().manual_seed(0))
    delta = adv - x
    assert torch.allclose(delta.abs(), torch.full_like(delta, 0.1))
    assert torch.equal(delta, delta[:, :, :1, :].expand_as(delta))
