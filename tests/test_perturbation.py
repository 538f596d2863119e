"""Eqs. 11-14 against slow transcriptions; the L2 gain of Eq. 11 (Theorem 3.1 and its correction)."""
from __future__ import annotations

import math

import pytest
import torch

from stable_snn.models import build_model, list_models
from stable_snn.neurons import DLIF, lif_multistep_reference
from stable_snn.perturbation import (
    LayerGain, layer_gain, leak_matrix, mppd, mppd_gains, ms_mppd, paper_bound_factor, spectral_norm,
    std, synapse_matrix, tasad, temporal_gain, young_bound_factor,
)

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
def test_dlif_perturbation_dynamics(form):
    T = 5
    layer = DLIF(T, leak=LAM, gain_form=form)
    a = 0.5 + torch.rand(T, generator=gen(5))
    with torch.no_grad():
        layer.gain.copy_(a)
    delta = torch.randn(T, 2, 3, generator=gen(6))
    eps = layer.perturbation_dynamics(delta)
    flat = delta.reshape(T, 6)
    if form == "leak":  # v = lam a[t] u + I: the leak of step t is lam a[t]
        expected = eq11_slow(flat.tolist(), [LAM * x for x in a.tolist()])
    else:  # v = lam u + a[t] I: the input difference is scaled by a[t]
        expected = eq11_slow([[a[t].item() * x for x in row] for t, row in enumerate(flat.tolist())], LAM)
    torch.testing.assert_close(eps.reshape(T, 6), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    eps.pow(2).sum().backward()
    assert layer.gain.grad is not None and layer.gain.grad.abs().sum() > 0


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


# -- the L2 gain of Eq. 11 -------------------------------------------------------------

def test_leak_matrix_matches_slow_and_mppd():
    T = 6
    leak = 0.5 + 0.5 * torch.rand(T, generator=gen(14), dtype=torch.float64)
    L = leak_matrix(leak, T)
    for t in range(T):
        for k in range(T):
            expected = math.prod(leak[j].item() for j in range(k + 1, t + 1)) if k <= t else 0.0
            assert L[t, k].item() == pytest.approx(expected, rel=1e-12, abs=0.0)
    delta = torch.randn(T, 3, generator=gen(15), dtype=torch.float64)
    torch.testing.assert_close(L @ delta, mppd(delta, leak))


@pytest.mark.parametrize("T,expected", [(8, 5.26), (16, 9.89), (30, 17.31), (100, 44.51)])
def test_temporal_gain_protocol_numbers(T, expected):
    assert round(temporal_gain(LAM, T), 2) == expected


@pytest.mark.parametrize("T,expected", [(8, 4.92), (16, 9.14), (30, 15.96), (100, 41.38)])
def test_constant_perturbation_gain_protocol_numbers(T, expected):
    """A perturbation constant in time along W's top singular vector: gain ||L 1|| / ||1||."""
    ones = torch.ones(T, 1, dtype=torch.float64)
    gain = mppd(ones, LAM).norm() / ones.norm()
    assert round(gain.item(), 2) == expected
    assert gain.item() <= temporal_gain(LAM, T)


def _random_setup(seed: int, T: int, m: int = 7, n: int = 5):
    W = torch.randn(m, n, generator=gen(seed), dtype=torch.float64)
    return W, torch.linalg.matrix_norm(W, ord=2).item(), temporal_gain(LAM, T)


@pytest.mark.parametrize("T", [8, 30])
def test_no_random_perturbation_exceeds_the_exact_gain(T):
    W, w_norm, sigma_L = _random_setup(16, T)
    exact = sigma_L * w_norm
    g = gen(17)
    worst = 0.0
    for trial in range(200):
        ds = torch.randn(T, 1 + trial % 3, W.shape[1], generator=g, dtype=torch.float64)
        if trial % 2:
            ds = ds.sign()  # spike differences live in {-1, 0, 1}
            ds[torch.rand(ds.shape, generator=g) < 0.5] = 0.0
        if ds.norm() == 0:
            continue
        eps = mppd(ds @ W.T, LAM)  # W ds[t] for every t and sample
        ratio = (eps.norm() / ds.norm()).item()
        assert ratio <= exact * (1 + 1e-9)
        worst = max(worst, ratio)
    assert worst > 0.2 * exact


@pytest.mark.parametrize("T", [8, 16, 30])
def test_worst_case_input_attains_the_exact_gain(T):
    W, w_norm, sigma_L = _random_setup(18, T)
    v_time = torch.linalg.svd(leak_matrix(LAM, T)).Vh[0]  # top right singular vector of L_T
    v_space = torch.linalg.svd(W).Vh[0]  # top right singular vector of W
    ds = v_time[:, None, None] * v_space[None, None, :]  # [T, 1, n]
    eps = mppd(ds @ W.T, LAM)
    ratio = (eps.norm() / ds.norm()).item()
    assert ratio == pytest.approx(sigma_L * w_norm, rel=1e-4)
    paper = paper_bound_factor(LAM) * w_norm
    assert (ratio > paper) == (T >= 30)  # the counterexample to Theorem 3.1


def test_young_bound_holds_and_matches_closed_form():
    for T in (1, 8, 30, 100):
        assert young_bound_factor(LAM, T) == pytest.approx((1 - LAM**T) / (1 - LAM))
        assert temporal_gain(LAM, T) <= young_bound_factor(LAM, T) + 1e-12


@pytest.mark.parametrize("T,violated", [(8, False), (16, False), (30, True), (100, True)])
def test_layer_gain_flags_paper_bound(T, violated):
    g = layer_gain("w", 2.0, LAM, LAM, T)
    assert isinstance(g, LayerGain)
    assert g.exact_gain == pytest.approx(2.0 * temporal_gain(LAM, T))
    assert g.paper_bound == pytest.approx(2.0 * 10.0)
    assert g.young_bound == pytest.approx(2.0 * young_bound_factor(LAM, T))
    assert g.bound_violated is violated


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (16, 16), (1, 9)])
def test_spectral_norm_matches_linalg(shape):
    M = torch.randn(*shape, generator=gen(19))
    expected = torch.linalg.matrix_norm(M.double(), ord=2).item()
    assert spectral_norm(M, iters=500, generator=gen(20)) == pytest.approx(expected, rel=1e-6)


def test_spectral_norm_edge_cases():
    assert spectral_norm(torch.zeros(3, 4)) == 0.0
    with pytest.raises(ValueError, match="2-D"):
        spectral_norm(torch.zeros(2, 3, 4))


def test_synapse_matrix_folds_batchnorm():
    lin = torch.nn.Linear(4, 3, bias=False)
    bn = torch.nn.BatchNorm1d(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
        bn.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))  # an offset, not part of W
    W = synapse_matrix([lin, bn])
    x = torch.randn(5, 4, generator=gen(21))
    with torch.no_grad():
        linear_part = bn(lin(x)) - bn(torch.zeros(1, 3))
    torch.testing.assert_close(x.double() @ W.T, linear_part.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(synapse_matrix([lin]), lin.weight.detach().double())
    with pytest.raises(TypeError):
        synapse_matrix([torch.nn.ReLU()])


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("neuron", ["lif", "dlif"])
def test_mppd_gains_one_entry_per_spiking_layer(name, neuron):
    torch.manual_seed(0)
    model = build_model(name, 10, 8, neuron, width=0.125, classifier_width=32)
    gains = mppd_gains(model, iters=50)
    assert len(gains) == len(model.spiking_layers())
    assert [g.name for g in gains] == [s.name for s in model.synapses()]
    for g in gains:
        assert g.weight_norm > 0
        assert g.exact_gain == pytest.approx(temporal_gain(LAM, 8) * g.weight_norm, rel=1e-6)
        assert not g.bound_violated  # T = 8 with a == 1


def test_mppd_gains_flags_long_horizons():
    torch.manual_seed(0)
    model = build_model("vgg5", 10, 30, "lif", width=0.125, classifier_width=32)
    gains = mppd_gains(model, iters=50)
    assert gains and all(g.bound_violated for g in gains)


@pytest.mark.parametrize("form", ["leak", "input"])
def test_mppd_gains_use_the_dlif_gains(form):
    T = 8
    torch.manual_seed(0)
    model = build_model("vgg5", 10, T, "dlif", width=0.125, classifier_width=32, gain_form=form)
    a = torch.linspace(0.5, 1.5, T)
    with torch.no_grad():
        for layer in model.spiking_layers():
            layer.gain.copy_(a)
    L = leak_matrix(LAM * a.double(), T) if form == "leak" else leak_matrix(LAM, T) * a.double()[None, :]
    sigma = torch.linalg.matrix_norm(L, ord=2).item()
    for g in mppd_gains(model, iters=50):
        assert g.exact_gain == pytest.approx(sigma * g.weight_norm, rel=1e-6)
    # the factor is the gain of the layer's own perturbation dynamics
    layer = model.spiking_layers()[-1]
    v = torch.linalg.svd(L.float()).Vh[0]
    eps = layer.perturbation_dynamics(v[:, None].clone())
    assert (eps.norm() / v.norm()).item() == pytest.approx(sigma, rel=1e-4)
