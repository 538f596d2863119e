"""SNN-RAT: retraction towards orthogonality and the simplex projection of the WRN residual weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stable_snn.models import build_model
from stable_snn.models.wrn import ConvexCombination
from stable_snn.regularizers import project_simplex, retract, snn_rat_step


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def retract_slow(W: list[list[float]], beta: float) -> list[list[float]]:
    """(1 + beta) W - beta W W^T W, entry by entry."""
    m, n = len(W), len(W[0])
    WtW = [[sum(W[k][i] * W[k][j] for k in range(m)) for j in range(n)] for i in range(n)]
    return [[(1 + beta) * W[i][j] - beta * sum(W[i][k] * WtW[k][j] for k in range(n)) for j in range(n)]
            for i in range(m)]


def on_simplex(p: torch.Tensor, tol: float = 1e-6) -> bool:
    return bool((p >= -tol).all()) and abs(p.sum().item() - 1.0) <= tol


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (5, 5)])
@pytest.mark.parametrize("beta", [0.0, 5e-4, 0.1])
def test_retract_matches_formula(shape, beta):
    W = torch.randn(*shape, generator=gen(0), dtype=torch.float64)
    torch.testing.assert_close(retract(W, beta), torch.tensor(retract_slow(W.tolist(), beta), dtype=torch.float64))


def test_retraction_moves_singular_values_towards_one():
    W = 0.5 * torch.randn(6, 8, generator=gen(1), dtype=torch.float64)
    before = torch.linalg.svdvals(W)
    for _ in range(200):
        W = retract(W, 0.1)
    after = torch.linalg.svdvals(W)
    assert (after - 1).abs().max() < 1e-3 < (before - 1).abs().max()


@pytest.mark.parametrize("v", [[0.3, 0.9], [2.0, -1.0], [-0.5, -0.7], [0.5, 0.5], [0.2, 0.1, 0.4, -0.3], [5.0]])
def test_project_simplex_on_simplex_and_idempotent(v):
    p = project_simplex(torch.tensor(v, dtype=torch.float64))
    assert p.shape == (len(v),)
    assert on_simplex(p, 1e-12)
    torch.testing.assert_close(project_simplex(p), p)


def test_project_simplex_is_nearest_point_in_2d():
    """Brute force over the segment {(q, 1 - q)}: no point of the simplex is closer."""
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    segment = torch.stack([grid, 1 - grid], 1)
    g = gen(2)
    for _ in range(50):
        v = 3 * torch.randn(2, generator=g, dtype=torch.float64)
        p = project_simplex(v)
        d_best = (segment - v).norm(dim=1).min().item()
        assert (p - v).norm().item() <= d_best + 1e-9
        assert (p - v).norm().item() == pytest.approx(d_best, abs=1e-4)


def test_project_simplex_beats_random_points_in_higher_dimension():
    g = gen(3)
    for n in (3, 5):
        v = torch.randn(n, generator=g, dtype=torch.float64)
        p = project_simplex(v)
        others = torch.distributions.Dirichlet(torch.ones(n, dtype=torch.float64)).sample((2000,))
        assert (p - v).norm() <= (others - v).norm(dim=1).min() + 1e-12


def test_snn_rat_step_keeps_wrn_convex_weights_on_simplex():
    torch.manual_seed(0)  # weight init only
    model = build_model("wrn16", 10, 2, "dlif", width=0.125)
    combos = [m for m in model.modules() if isinstance(m, ConvexCombination)]
    assert combos
    g = gen(4)
    with torch.no_grad():
        for c in combos:
            c.weight.copy_(2 * torch.randn(2, generator=g))
    convs = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    snn_rat_step(model, beta=4e-3, generator=gen(5))
    for c in combos:
        assert on_simplex(c.weight.detach())
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            W = convs[n].flatten(1)
            torch.testing.assert_close(m.weight.detach().flatten(1), retract(W, 4e-3), rtol=1e-5, atol=1e-6)


def _linears():
    torch.manual_seed(0)  # weight init only
    return nn.Sequential(nn.Linear(16, 300), nn.Linear(300, 100))


def test_snn_rat_rows_subset_for_large_linear():
    net = _linears()
    before = [m.weight.detach().clone() for m in net]
    snn_rat_step(net, beta=0.05, generator=gen(6))
    big_changed = (net[0].weight.detach() != before[0]).any(1)
    assert int(big_changed.sum()) == int(0.3 * 300)  # 30 % of the 300 rows
    rows = big_changed.nonzero()[:, 0]
    torch.testing.assert_close(net[0].weight.detach()[rows], retract(before[0][rows], 0.05))
    assert (net[1].weight.detach() != before[1]).any(1).all()  # < 200 outputs: every row
    torch.testing.assert_close(net[1].weight.detach(), retract(before[1], 0.05))


def test_snn_rat_identical_generators_identical_results():
    """DDP consistency: every worker gets a generator with the same seed."""
    a, b, c = _linears(), _linears(), _linears()
    snn_rat_step(a, 0.05, gen(7))
    snn_rat_step(b, 0.05, gen(7))
    snn_rat_step(c, 0.05, gen(8))
    for ma, mb, mc in zip(a, b, c):
        assert torch.equal(ma.weight, mb.weight)
    assert not torch.equal(a[0].weight, c[0].weight)  # a different seed picks other rows


def test_snn_rat_validates_beta_and_zero_is_identity():
    net = _linears()
    before = [m.weight.detach().clone() for m in net]
    snn_rat_step(net, 0.0, gen(9))
    for m, w in zip(net, before):
        assert torch.equal(m.weight.detach(), w)
    with pytest.raises(ValueError, match="beta"):
        snn_rat_step(net, -1e-3)
