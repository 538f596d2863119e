"""FAB-T (Croce & Hein 2020): the minimal L-inf step onto a hyperplane within the box, and the minimally
distorted adversarial examples it finds on a linear classifier, whose distances are known exactly."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stable_snn.attacks import FABT, linf_box_projection


def reach(p: list[float], w: list[float], c: float, lam: float) -> float:
    """The largest ``sign(c) <w, d>`` with every ``|d_i| <= lam`` and ``p + d`` in [0, 1], coordinate by coordinate."""
    total = 0.0
    for pi, wi in zip(p, w):
        if wi == 0:
            continue
        up = (c > 0) == (wi > 0)
        total += abs(wi) * min(lam, (1 - pi) if up else pi)
    return total


def least_distance(p: list[float], w: list[float], c: float) -> float:
    """The least ``lam`` with ``reach(lam) >= |c|`` by bisection (inf when even the whole box falls short)."""
    if reach(p, w, c, 1.0) < abs(c):
        return float("inf")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if reach(p, w, c, mid) >= abs(c) else (mid, hi)
    return hi


def test_projection_is_the_least_linf_step_onto_the_plane_within_the_box():
    g = torch.Generator().manual_seed(0)
    b, n = 40, 12
    p = torch.rand(b, n, generator=g, dtype=torch.float64)
    w = torch.randn(b, n, generator=g, dtype=torch.float64) * (torch.rand(b, n, generator=g) > 0.25)
    c = torch.randn(b, generator=g, dtype=torch.float64) * 2
    c[0] = 0.0
    d = linf_box_projection(p, w, c)
    assert ((p + d) >= -1e-12).all() and ((p + d) <= 1 + 1e-12).all()
    assert (d[w == 0] == 0).all() and (d[0] == 0).all()
    feasible = 0
    for i in range(b):
        lam = least_distance(p[i].tolist(), w[i].tolist(), c[i].item())
        if lam == float("inf"):  # out of the box's reach: every useful coordinate moves all the way
            assert (w[i] * d[i]).sum().abs().item() == pytest.approx(reach(p[i].tolist(), w[i].tolist(), c[i].item(), 1.0))
            continue
        feasible += 1
        assert (w[i] * d[i]).sum().item() == pytest.approx(c[i].item(), abs=1e-9)  # on the plane
        assert d[i].abs().max().item() == pytest.approx(lam, abs=1e-9)  # and no closer point exists
    assert 10 < feasible < b


class LinearNet(nn.Module):
    """``z = W x + b`` on [B, 3, 4, 4] (float64 inside): its decision boundaries are the hyperplanes FAB linearises."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = nn.Parameter(torch.randn(48, classes, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(classes, generator=g, dtype=torch.float64))

    def forward(self, x):
        return (x.double().flatten(1) @ self.w + self.b).float()


def distances(model: LinearNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[B, C]``: the least L-inf distance (in the box) at which class k's logit reaches the label's."""
    w, b = model.w.detach(), model.b.detach()
    out = torch.full((len(y), w.shape[1]), float("inf"), dtype=torch.float64)
    for i in range(len(y)):
        p = x[i].double().flatten()
        for k in range(w.shape[1]):
            if k != int(y[i]):
                wk = (w[:, k] - w[:, y[i]]).tolist()
                gap = float(p @ (w[:, k] - w[:, y[i]]) + b[k] - b[y[i]])
                out[i, k] = least_distance(p.tolist(), wk, -gap)
    return out


def test_fab_t_finds_the_boundary_of_a_linear_model():
    model = LinearNet()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(24, 3, 4, 4, generator=g) * 0.5 + 0.25
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    dist = distances(model, x, y)
    second = dist.gather(1, logits.argsort(1, descending=True)[:, 1:2]).squeeze(1)
    nearest = dist.min(1).values
    assert torch.isfinite(second).all()

    eps = float(second.max()) * 1.06  # every sample has an adversarial example of the second class within eps
    adv = FABT(eps=eps, steps=20, n_target_classes=1)(model, x, y)
    r = (adv - x).flatten(1).abs().amax(1).double()
    assert (model(adv).argmax(1) != y).all()
    assert (r <= second * 1.05 + 1e-6).all()  # about the least distance to that class: overshoot eta = 1.05
    assert (r >= nearest * (1 - 1e-4)).all()  # never closer than any boundary can be

    small = float(nearest.min()) * 0.9  # no adversarial example exists this close
    assert torch.equal(FABT(eps=small, steps=20, n_target_classes=5)(model, x, y), x)


def test_more_targets_and_restarts_only_fool_more():
    model = LinearNet()
    x = torch.rand(32, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    fooled = {}
    for targets, restarts in ((1, 1), (3, 1), (3, 2)):
        adv = FABT(eps=0.05, steps=5, n_target_classes=targets, n_restarts=restarts)(
            model, x, y, torch.Generator().manual_seed(0))
        fooled[targets, restarts] = model(adv).argmax(1) != y
    assert not (fooled[1, 1] & ~fooled[3, 1]).any() and not (fooled[3, 1] & ~fooled[3, 2]).any()
    assert fooled[3, 2].sum() > fooled[1, 1].sum()
