"""Eq. 18: ds/dv = (1/omega^2) max(omega - |v - theta|, 0), via autograd, against the formula."""
from __future__ import annotations

import pytest
import torch

from stable_snn.neurons import BACKENDS, build_neuron, spike, surrogate_width, triangle_grad


def eq18_slow(v: float, theta: float, omega: float) -> float:
    return max(omega - abs(v - theta), 0.0) / omega**2


GRID = [-1.5, -0.2, 0.0, 0.3, 0.5, 0.75, 0.99, 1.0, 1.01, 1.25, 1.5, 1.9, 2.0, 2.5, 3.1]


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("neuron", ["lif", "dlif"])
@pytest.mark.parametrize("omega", [0.5, 1.0, 2.0])
def test_neuron_gradient_single_step(backend, neuron, omega):
    """With T = 1, v = I, so d s / d I is Eq. 18 itself; set through ``surrogate_width``."""
    layer = build_neuron(neuron, 1, threshold=1.0, backend=backend)
    holder = torch.nn.Sequential(layer)
    current = torch.tensor(GRID, dtype=torch.float32).view(1, 1, -1).requires_grad_(True)
    with surrogate_width(holder, omega):
        (grad,) = torch.autograd.grad(layer(current).sum(), current)
    assert layer.surrogate_width == 1.0  # restored
    expected = torch.tensor([eq18_slow(x, 1.0, omega) for x in GRID]).view(1, 1, -1)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_surrogate_on_in_eval_mode(backend):
    layer = build_neuron("dlif", 3, backend=backend).eval()
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
