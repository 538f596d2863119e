"""Surrogate gradients: Eq. 18 (triangle) and arctan against their formulas; the attacker's scoped surrogate."""
from __future__ import annotations

import math

import pytest
import torch

from stable_snn.neurons import (
    Arctan, Triangle, attacker_surrogate, build_neuron, spike, spiking_layers, surrogate_width, triangle_grad,
)

GRID = [-1.5, -0.2, 0.0, 0.3, 0.5, 0.75, 0.99, 1.0, 1.01, 1.25, 1.5, 1.9, 2.0, 2.5, 3.1]


def eq18_slow(v: float, theta: float, omega: float) -> float:
    return max(omega - abs(v - theta), 0.0) / omega**2


def arctan_slow(v: float, theta: float, alpha: float) -> float:
    """d/dv of 1/pi arctan(pi/2 alpha (v - theta)) + 1/2, written out."""
    x = math.pi / 2 * alpha * (v - theta)
    return alpha / 2 / (1 + x * x)


@pytest.mark.parametrize("omega", [0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("theta", [1.0, 0.6])
def test_spike_gradient_matches_formula(omega, theta):
    v = torch.tensor(GRID, dtype=torch.float64, requires_grad=True)
    s = spike(v, theta, omega)
    assert s.tolist() == [1.0 if x >= theta else 0.0 for x in GRID]  # Heaviside, H(0) = 1
    (grad,) = torch.autograd.grad(s.sum(), v)
    expected = torch.tensor([eq18_slow(x, theta, omega) for x in GRID], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(triangle_grad(v.detach(), theta, omega), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
@pytest.mark.parametrize("theta", [1.0, 0.6])
def test_arctan_gradient_matches_formula(alpha, theta):
    v = torch.tensor(GRID, dtype=torch.float64, requires_grad=True)
    s = spike(v, theta, Arctan(alpha))
    assert s.tolist() == [1.0 if x >= theta else 0.0 for x in GRID]  # only the backward changes
    (grad,) = torch.autograd.grad(s.sum(), v)
    expected = torch.tensor([arctan_slow(x, theta, alpha) for x in GRID], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_arctan_per_neuron_per_step_sharpness():
    """A tensor alpha ``[T, 1, N]``: neuron i at step t gets alpha[t, 0, i] (T = 1: v = I)."""
    T, N = 3, len(GRID)
    alpha = 0.5 + torch.rand(T, 1, N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layer = build_neuron("lif", T, threshold=1.0, surrogate=Arctan(alpha))
    current = torch.zeros(T, 1, N, dtype=torch.float64)
    current[0, 0] = torch.tensor(GRID, dtype=torch.float64)
    current.requires_grad_(True)
    weight = torch.zeros(T, 1, N, dtype=torch.float64)
    weight[0] = 1.0  # the loss sees the first step only: ds[0]/dI[0] = surrogate(v[0] = I[0]) at step 0
    (grad,) = torch.autograd.grad((layer(current) * weight).sum(), current)
    expected = [arctan_slow(x, 1.0, float(alpha[0, 0, i])) for i, x in enumerate(GRID)]
    torch.testing.assert_close(grad[0, 0], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # step 2 uses alpha[2]: the same check through the last step's spike alone
    weight.zero_()
    weight[2] = 1.0
    cur2 = torch.zeros(T, 1, N, dtype=torch.float64)
    cur2[2, 0] = torch.tensor(GRID, dtype=torch.float64)
    cur2.requires_grad_(True)
    (grad2,) = torch.autograd.grad((layer(cur2) * weight).sum(), cur2)
    expected2 = [arctan_slow(x, 1.0, float(alpha[2, 0, i])) for i, x in enumerate(GRID)]
    torch.testing.assert_close(grad2[2, 0], torch.tensor(expected2, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_surrogates_are_validated():
    for bad in (0.0, -1.0, float("inf"), "wide"):
        with pytest.raises(ValueError, match="width"):
            Triangle(bad)
        with pytest.raises(ValueError, match="alpha"):
            Arctan(bad)
    with pytest.raises(ValueError, match="alpha"):
        Arctan(torch.tensor([1.0, -1.0]))
    layer = build_neuron("lif", 3, surrogate=Arctan(torch.ones(3, 2)))
    with pytest.raises(ValueError, match=r"\[T, B, \*\]"):
        layer(torch.zeros(3, 2, 4))
    with pytest.raises(ValueError, match="surrogate"):
        layer.surrogate = 2.0
    with pytest.raises(ValueError, match="not both"):
        build_neuron("lif", 2, surrogate_width=0.5, surrogate=Triangle(0.5))


@pytest.mark.parametrize("neuron", ["lif", "dlif"])
@pytest.mark.parametrize("omega", [0.5, 1.0, 2.0])
def test_neuron_gradient_single_step(neuron, omega):
    """With T = 1, v = I, so d s / d I is Eq. 18 itself; set through ``surrogate_width``."""
    layer = build_neuron(neuron, 1, threshold=1.0)
    holder = torch.nn.Sequential(layer)
    current = torch.tensor(GRID, dtype=torch.float32).view(1, 1, -1).requires_grad_(True)
    with surrogate_width(holder, omega):
        (grad,) = torch.autograd.grad(layer(current).sum(), current)
    assert layer.surrogate == Triangle(1.0)  # restored
    expected = torch.tensor([eq18_slow(x, 1.0, omega) for x in GRID]).view(1, 1, -1)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


def test_attacker_surrogate_swaps_and_restores_even_on_error():
    holder = torch.nn.Sequential(build_neuron("lif", 2, surrogate_width=0.5), build_neuron("dlif", 2))
    before = [m.surrogate for _, m in spiking_layers(holder)]
    attack = Arctan(3.0)
    with pytest.raises(RuntimeError, match="inside"):
        with attacker_surrogate(holder, attack):
            assert all(m.surrogate is attack for _, m in spiking_layers(holder))
            raise RuntimeError("inside")
    assert [m.surrogate for _, m in spiking_layers(holder)] == before
    with attacker_surrogate(holder, {"1": attack}):  # per layer, by name
        assert holder[0].surrogate == Triangle(0.5) and holder[1].surrogate is attack
    assert [m.surrogate for _, m in spiking_layers(holder)] == before
    with pytest.raises(ValueError, match=r"no spiking layers named \['7'\]"):
        with attacker_surrogate(holder, {"7": attack}):
            pass


@pytest.mark.parametrize("neuron", ["lif", "dlif"])
def test_surrogate_on_in_eval_mode(neuron):
    layer = build_neuron(neuron, 3).eval()
    current = torch.full((3, 2, 4), 0.6, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(current).sum(), current)
    assert grad.abs().sum() > 0


def test_surrogate_width_rejects_non_positive():
    holder = torch.nn.Sequential(build_neuron("lif", 2))
    with pytest.raises(ValueError, match="width"):
        with surrogate_width(holder, 0.0):
            pass
    with pytest.raises(ValueError, match="surrogate_width"):
        build_neuron("lif", 2, surrogate_width=-1.0)
