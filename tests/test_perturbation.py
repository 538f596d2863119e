"""Eqs. 11-14, MPPD-TV-l1 and the spike distances against slow transcriptions."""
from __future__ import annotations

import math

import pytest
import torch

from stable_snn.neurons import DLIF, LIF, lif_multistep_reference
from stable_snn.perturbation import mppd, mppd_tv_l1, ms_mppd, std, tasad

LAM = 0.99


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- slow transcriptions ---------------------------------------------------------------

def eq11_slow(delta: list[list[float]], leak) -> list[list[float]]:
    """eps[t] = leak[t] eps[t-1] + dI[t], eps[0] = 0, per neuron; ``delta`` is [T][N]."""
    T, N = len(delta), len(delta[0])
    lam = [leak] * T if isinstance(leak, float) else list(leak)
    eps = [[0.0] * N for _ in range(T)]
    for i in range(N):
        prev = 0.0
        for t in range(T):
            prev = lam[t] * prev + delta[t][i]
            eps[t][i] = prev
    return eps


def eq14_slow(eps: list[list[list[float]]], reduction: str) -> float:
    """sum_i sum_t eps_i[t]^2 per sample; "sum": batch mean of that, "mean": mean over all entries."""
    T, B, N = len(eps), len(eps[0]), len(eps[0][0])
    per_sample = [sum(eps[t][b][i] ** 2 for t in range(T) for i in range(N)) for b in range(B)]
    if reduction == "sum":
        return sum(per_sample) / B
    return sum(per_sample) / (T * B * N)


def eq12_slow(s, s_pert) -> float:
    """|| (sum_t s[t] - sum_t s~[t]) / T ||_2 per sample, averaged over the batch; inputs [T][B][N]."""
    T, B, N = len(s), len(s[0]), len(s[0][0])
    total = 0.0
    for b in range(B):
        sq = 0.0
        for i in range(N):
            d = sum(s[t][b][i] for t in range(T)) - sum(s_pert[t][b][i] for t in range(T))
            sq += (d / T) ** 2
        total += math.sqrt(sq)
    return total / B


def eq13_slow(s, s_pert) -> float:
    """sqrt(sum_t ||s[t] - s~[t]||_2^2) per sample, averaged over the batch."""
    T, B, N = len(s), len(s[0]), len(s[0][0])
    total = 0.0
    for b in range(B):
        total += math.sqrt(sum((s[t][b][i] - s_pert[t][b][i]) ** 2 for t in range(T) for i in range(N)))
    return total / B


# -- Eq. 11 ----------------------------------------------------------------------------

def test_mppd_scalar_leak_matches_slow():
    delta = torch.randn(9, 5, generator=gen(0), dtype=torch.float64)
    eps = mppd(delta, LAM)
    assert eps.shape == delta.shape
    torch.testing.assert_close(eps, torch.tensor(eq11_slow(delta.tolist(), LAM), dtype=torch.float64))


def test_mppd_per_step_leak_matches_slow():
    T = 7
    delta = torch.randn(T, 2, 3, generator=gen(1), dtype=torch.float64)
    leak = LAM * (0.5 + torch.rand(T, generator=gen(2), dtype=torch.float64))
    eps = mppd(delta, leak)
    expected = torch.tensor(eq11_slow(delta.reshape(T, 6).tolist(), leak.tolist()), dtype=torch.float64)
    torch.testing.assert_close(eps.reshape(T, 6), expected)
    with pytest.raises(ValueError, match="leak"):
        mppd(delta, leak[:-1])


def test_mppd_constant_perturbation_closed_form():
    """Sec. 3.2: constant J gives eps[t] = (1 - lam^t) / (1 - lam) J."""
    T, J = 30, 0.1
    eps = mppd(torch.full((T, 1), J, dtype=torch.float64), LAM)[:, 0]
    expected = torch.tensor([(1 - LAM**t) / (1 - LAM) * J for t in range(1, T + 1)], dtype=torch.float64)
    torch.testing.assert_close(eps, expected)


def test_mppd_is_exact_before_the_first_spike():
    """Eq. 8: with no spike in either run, eps = v - v~ exactly (the reset term of Eq. 9 vanishes)."""
    T = 6
    clean = 0.1 * torch.rand(T, 4, generator=gen(3), dtype=torch.float64)
    pert = clean + 0.02 * torch.randn(T, 4, generator=gen(4), dtype=torch.float64)
    s, v = lif_multistep_reference(clean, LAM, 1.0, 1.0)
    s_p, v_p = lif_multistep_reference(pert, LAM, 1.0, 1.0)
    assert s.sum() == 0 and s_p.sum() == 0
    torch.testing.assert_close(mppd(clean - pert, LAM), v - v_p)


@pytest.mark.parametrize("form", ["leak", "input"])
def test_dlif_perturbation_dynamics_in_the_dlif_form_use_the_gains_detached(form):
    """``mppd_leak: dlif``: the layer's DLIF dynamics, the gains outside the graph."""
    T = 5
    layer = DLIF(T, leak=LAM, gain_form=form)
    a = 0.5 + torch.rand(T, generator=gen(5))
    with torch.no_grad():
        layer.gain.copy_(a)
    delta = torch.randn(T, 2, 3, generator=gen(6), requires_grad=True)
    eps = layer.perturbation_dynamics(delta, "dlif")
    flat = delta.detach().reshape(T, 6)
    if form == "leak":  # v = lam a[t] u + I: the leak of step t is lam a[t]
        expected = eq11_slow(flat.tolist(), [LAM * x for x in a.tolist()])
    else:  # v = lam u + a[t] I: the input difference is scaled by a[t]
        expected = eq11_slow([[a[t].item() * x for x in row] for t, row in enumerate(flat.tolist())], LAM)
    torch.testing.assert_close(eps.detach().reshape(T, 6), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    eps.pow(2).sum().backward()
    assert layer.gain.grad is None and delta.grad.abs().sum() > 0


@pytest.mark.parametrize("form", ["leak", "input"])
def test_dlif_perturbation_dynamics_by_default_are_the_authors_lambda_recursion(form):
    """The default MPPD of a DLIF layer: leak lam on the pre-gain difference, whatever the gains are."""
    T = 5
    layer = DLIF(T, leak=LAM, gain_form=form)
    with torch.no_grad():
        layer.gain.copy_(0.5 + torch.rand(T, generator=gen(5)))
    delta = torch.randn(T, 2, 3, generator=gen(6))
    eps = layer.perturbation_dynamics(delta)
    expected = eq11_slow(delta.reshape(T, 6).tolist(), LAM)
    torch.testing.assert_close(eps.reshape(T, 6), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eps, LIF(T, leak=LAM).perturbation_dynamics(delta))
    with pytest.raises(ValueError, match="MPPD form must be one of"):
        layer.perturbation_dynamics(delta, "paper")


# -- Eq. 14, 12, 13 ---------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ms_mppd_matches_slow(reduction):
    eps = torch.randn(4, 3, 5, generator=gen(7), dtype=torch.float64)
    got = ms_mppd(eps, reduction)
    assert got.item() == pytest.approx(eq14_slow(eps.tolist(), reduction), rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        ms_mppd(eps, "max")


def test_ms_mppd_sum_is_mean_times_neurons_and_steps():
    eps = torch.randn(4, 3, 2, 5, generator=gen(8))
    assert ms_mppd(eps, "sum").item() == pytest.approx(ms_mppd(eps, "mean").item() * 4 * 10, rel=1e-5)


def tv_l1_slow(eps: list[list[list[float]]], reduction: str) -> float:
    """MPPD-TV-l1: sum_i sum_t |eps_i[t]| per sample; "sum": batch mean of that, "mean": mean over all entries."""
    T, B, N = len(eps), len(eps[0]), len(eps[0][0])
    per_sample = [sum(abs(eps[t][b][i]) for t in range(T) for i in range(N)) for b in range(B)]
    return sum(per_sample) / B if reduction == "sum" else sum(per_sample) / (T * B * N)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mppd_tv_l1_matches_slow(reduction):
    """The l1 norm of the same recursion, reduced as MS-MPPD is: against a direct transcription of
    eps[t] = lam eps[t-1] + dI[t] and sum |eps| (the recursion computed here, not by mppd)."""
    delta = torch.randn(4, 3, 5, generator=gen(27), dtype=torch.float64)
    eps_slow = eq11_slow(delta.reshape(4, 15).tolist(), LAM)
    eps_slow = [[row[b * 5:(b + 1) * 5] for b in range(3)] for row in eps_slow]  # [T][B][N]
    got = mppd_tv_l1(mppd(delta, LAM), reduction)
    assert got.item() == pytest.approx(tv_l1_slow(eps_slow, reduction), rel=1e-6)
    assert mppd_tv_l1(mppd(delta, LAM), reduction).item() != pytest.approx(ms_mppd(mppd(delta, LAM), reduction).item())
    with pytest.raises(ValueError, match="reduction"):
        mppd_tv_l1(delta, "max")


def _spike_pair(seed: int):
    s = (torch.rand(6, 3, 2, 4, generator=gen(seed)) < 0.4).float()
    flip = torch.rand(s.shape, generator=gen(seed + 1)) < 0.3
    s_pert = torch.where(flip, 1.0 - s, s)
    return s, s_pert


def test_tasad_matches_slow():
    s, s_pert = _spike_pair(9)
    T, B = s.shape[:2]
    expected = eq12_slow(s.reshape(T, B, -1).tolist(), s_pert.reshape(T, B, -1).tolist())
    assert tasad(s, s_pert).item() == pytest.approx(expected, rel=1e-6)
    assert tasad(s, s).item() == pytest.approx(0.0, abs=1e-5)


def test_std_matches_slow():
    s, s_pert = _spike_pair(11)
    T, B = s.shape[:2]
    expected = eq13_slow(s.reshape(T, B, -1).tolist(), s_pert.reshape(T, B, -1).tolist())
    assert std(s, s_pert).item() == pytest.approx(expected, rel=1e-6)
    assert std(s, s).item() == pytest.approx(0.0, abs=1e-5)


def test_spike_distances_validate_shapes_and_have_finite_gradients():
    s, s_pert = _spike_pair(13)
    with pytest.raises(ValueError, match=r"\[T, B, \*\]"):
        tasad(s, s_pert[:-1])
    with pytest.raises(ValueError, match=r"\[T, B, \*\]"):
        std(s[0, 0, 0], s_pert[0, 0, 0])
    x = s.clone().requires_grad_(True)
    (std(s, x) + tasad(s, x)).backward()  # identical trains: the gradient at 0 must stay finite
    assert torch.isfinite(x.grad).all()
