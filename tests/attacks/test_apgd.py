"""APGD against a direct, slow, per-sample transcription of Croce & Hein (2020), Alg. 1."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stable_snn.attacks import APGD, APGDT, apgd_checkpoints, dlr_loss, dlr_targeted_loss
from stable_snn.attacks.apgd import ce_loss
from tests.attacks.helpers import predictions


def paper_checkpoints(n_iter: int) -> list[int]:
    """w_j = ceil(p_j N): p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p_prev, p = 0.0, 0.22
    w = [0]
    while p <= 1.0:
        w.append(math.ceil(round(p * n_iter, 9)))
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return sorted({x for x in w if x < n_iter})


@pytest.mark.parametrize("n_iter, expected", [
    (10, [0, 3, 5, 6, 7, 8, 9]),
    (100, [0, 22, 41, 57, 70, 80, 87, 93, 99]),
    (1, [0]),
])
def test_checkpoints_are_the_published_fractions(n_iter, expected):
    assert apgd_checkpoints(n_iter) == expected


@pytest.mark.parametrize("n_iter", [2, 5, 7, 20, 40, 250, 1000])
def test_checkpoints_match_transcription(n_iter):
    assert apgd_checkpoints(n_iter) == paper_checkpoints(n_iter)


def dlr_reference(z: torch.Tensor, y: int) -> float:
    """-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), one sample."""
    zs = sorted(z.tolist(), reverse=True)
    others = max(v for i, v in enumerate(z.tolist()) if i != y)
    return -(z[y].item() - others) / (zs[0] - zs[2] + 1e-12)


def test_dlr_matches_transcription_and_is_shift_scale_invariant():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    y[0] = z[0].argmax()  # a correctly classified sample: DLR < 0
    got = dlr_loss(z, y)
    assert torch.allclose(got, torch.tensor([dlr_reference(z[i], int(y[i])) for i in range(16)], dtype=z.dtype))
    assert got[0] < 0
    assert torch.allclose(dlr_loss(3.0 * z + 7.0, y), got)
    with pytest.raises(ValueError, match="C >= 3"):
        dlr_loss(z[:, :2], y.clamp(max=1))


class SmoothNet(nn.Module):
    """A small smooth classifier on [B, 3, 4, 4], computed in float64 (so batching cannot change a sign)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(48, 16, generator=g, dtype=torch.float64) * 0.5)
        self.w2 = nn.Parameter(torch.randn(16, classes, generator=g, dtype=torch.float64))

    def forward(self, x):
        return (torch.tanh(x.double().flatten(1) @ self.w1 * 4.0) @ self.w2).float()


def one_sample(model, x, y, eps, loss_fn):
    """(projection onto the eps-ball of ``x`` [C, H, W] and [0, 1], z -> (loss, d loss / d z, fooled)) for one sample."""
    def proj(z):
        return torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)

    def f(z):
        z = z.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(z[None])
            val = loss_fn(logits, y[None])[0]
            (g,) = torch.autograd.grad(val, z)
        return val.item(), g, bool(logits.argmax(1).item() != y.item())

    return proj, f


def apgd_reference(model, x, y, *, eps, n_iter, rho, momentum, loss, noise):
    """Alg. 1 for one sample ``x`` [C, H, W], with the choices documented in apgd.py (``loss``: a name or a function)."""
    proj, f = one_sample(model, x, y, eps, loss if callable(loss) else (dlr_loss if loss == "dlr" else ce_loss))

    checkpoints = paper_checkpoints(n_iter)
    x_k = proj(x + (2 * noise - 1) * eps)
    f_k, g_k, fooled = f(x_k)
    losses = [f_k]
    adv = x_k if fooled else None
    x_max, f_max, g_max = x_k, f_k, g_k
    x_prev, eta = x_k, 2 * eps
    w_prev, f_max_prev, reduced_prev = 0, f_max, False
    for k in range(n_iter):
        a = 1.0 if k == 0 else momentum
        z = proj(x_k + eta * g_k.sign())
        x_new = proj(x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev))
        f_new, g_new, fooled = f(x_new)
        if fooled and adv is None:
            adv = x_new
        losses.append(f_new)
        if f_new > f_max:
            x_max, f_max, g_max = x_new, f_new, g_new
        x_prev, x_k, g_k = x_k, x_new, g_new
        w = k + 1
        if w in checkpoints[1:]:
            increases = sum(losses[i + 1] > losses[i] for i in range(w_prev, w))
            condition1 = increases < rho * (w - w_prev)
            condition2 = not reduced_prev and f_max == f_max_prev
            if condition1 or condition2:
                eta /= 2
                x_k = x_prev = x_max
                g_k, losses[-1] = g_max, f_max
            reduced_prev, f_max_prev, w_prev = condition1 or condition2, f_max, w
    return adv if adv is not None else x_max


@pytest.mark.parametrize("loss", ["ce", "dlr"])
@pytest.mark.parametrize("n_iter, eps", [(10, 0.05), (25, 0.05), (40, 0.2)])
def test_apgd_matches_slow_transcription(loss, n_iter, eps):
    model = SmoothNet()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(48, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 5  # two samples misclassified from the start: returned unchanged
    attack = APGD(eps=eps, steps=n_iter, loss=loss, rho=0.75, momentum=0.75)
    adv = attack(model, x, y, torch.Generator().manual_seed(7))

    correct = model(x).argmax(1) == y
    noise = torch.rand(x[correct].shape, generator=torch.Generator().manual_seed(7))
    expected = x.clone()
    for j, i in enumerate(correct.nonzero().squeeze(1).tolist()):
        expected[i] = apgd_reference(model, x[i], y[i], eps=eps, n_iter=n_iter, rho=0.75, momentum=0.75, loss=loss,
                                     noise=noise[j])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.equal(adv[:2], x[:2])
    fooled = model(adv).argmax(1) != y
    assert fooled[2:].any(), "the attack should fool some samples of this easy model"


def dlr_targeted_reference(z: torch.Tensor, y: int, t: int) -> float:
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), one sample."""
    zs = sorted(z.tolist(), reverse=True)
    return -(z[y].item() - z[t].item()) / (zs[0] - 0.5 * (zs[2] + zs[3]) + 1e-12)


def test_targeted_dlr_matches_transcription():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g, dtype=torch.float64)
    y, t = torch.randint(0, 10, (16,), generator=g), torch.randint(0, 10, (16,), generator=g)
    expected = torch.tensor([dlr_targeted_reference(z[i], int(y[i]), int(t[i])) for i in range(16)], dtype=z.dtype)
    assert torch.allclose(dlr_targeted_loss(z, y, t), expected)
    with pytest.raises(ValueError, match="C >= 4"):
        dlr_targeted_loss(z[:, :3], y.clamp(max=2), t.clamp(max=2))


def test_apgd_t_matches_slow_transcription():
    """One APGD run per target class (ranks 2 and 3 of the clean logits) on the samples still robust."""
    model = SmoothNet()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(40, 3, 4, 4, generator=g)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    y[:2] = (y[:2] + 1) % 5
    eps, n_iter = 0.04, 12
    adv = APGDT(eps=eps, steps=n_iter, n_target_classes=2)(model, x, y, torch.Generator().manual_seed(5))

    draws = torch.Generator().manual_seed(5)
    robust = logits.argmax(1) == y
    expected = x.clone()
    for rank in (1, 2):
        idx = robust.nonzero().squeeze(1).tolist()
        noise = torch.rand((len(idx), 3, 4, 4), generator=draws)
        for j, i in enumerate(idx):
            target = int(logits[i].argsort(descending=True)[rank])
            out = apgd_reference(model, x[i], y[i], eps=eps, n_iter=n_iter, rho=0.75, momentum=0.75, noise=noise[j],
                                 loss=lambda z, yy, t=target: dlr_targeted_loss(z, yy, torch.tensor([t])))
            expected[i] = out
            if model(out[None]).argmax(1).item() != y[i].item():
                robust[i] = False
    assert torch.allclose(adv, expected, atol=1e-6)
    assert (model(adv).argmax(1) != y)[2:].any()


@pytest.mark.slow  # trains a model
@pytest.mark.timeout(60)
def test_more_restarts_only_fool_more(trained):
    """The first run uses the same draws, so a second restart can only add fooled samples."""
    x, y = trained.images[:64], trained.labels[:64]
    robust = {}
    for n in (1, 2):
        adv = APGD(steps=5, n_restarts=n)(trained.model, x, y, torch.Generator().manual_seed(0))
        robust[n] = predictions(trained.model, adv) == y
    one, two = robust[1], robust[2]
    assert not (two & ~one).any()
