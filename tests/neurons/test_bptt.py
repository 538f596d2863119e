"""Gradients through T steps of Eq. 1 with the Eq. 18 surrogate, including the DLIF gains a[t].

The oracle is a slow per-neuron scalar transcription where the spike is
``H(v - theta) + F(v) - F(v).detach()`` with F an antiderivative of the triangle of Eq. 18,
so autograd sees exactly ds/dv = (1/omega^2) max(omega - |v - theta|, 0) and no library code.
"""
from __future__ import annotations

import pytest
import torch

from stable_snn.neurons import DLIF, build_neuron, lif_multistep_reference
from stable_snn.neurons.fused import fused_lif

IMPLEMENTATIONS = ["reference", "fused"]


def triangle_antiderivative(d: torch.Tensor, omega: float) -> torch.Tensor:
    """F with F'(d) = max(omega - |d|, 0) / omega^2, F(-inf) = 0 (d = v - theta)."""
    if d <= -omega:
        return d * 0.0
    if d <= 0:
        return (d + omega) ** 2 / (2 * omega**2)
    if d < omega:
        return 1.0 - (omega - d) ** 2 / (2 * omega**2)
    return d * 0.0 + 1.0


def slow_spike(v: torch.Tensor, theta: float, omega: float) -> torch.Tensor:
    f = triangle_antiderivative(v - theta, omega)
    return (1.0 if float(v.detach()) >= theta else 0.0) + (f - f.detach())


def slow_forward(current: torch.Tensor, lam: float, theta: float, omega: float, gain=None, form="leak"):
    """Eq. 1 neuron by neuron, step by step, on scalar float64 tensors; spikes ``[T, N]``."""
    T, N = current.shape
    rows = [[None] * N for _ in range(T)]
    for i in range(N):
        u = torch.zeros((), dtype=torch.float64)
        for t in range(T):
            if gain is None:
                v = lam * u + current[t, i]
            elif form == "leak":
                v = lam * gain[t] * u + current[t, i]
            else:
                v = lam * u + gain[t] * current[t, i]
            s = slow_spike(v, theta, omega)
            u = v * (1.0 - s)
            rows[t][i] = s
    return torch.stack([torch.stack(r) for r in rows])


def _inputs(T: int, N: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    current = 0.4 + 0.5 * torch.randn(T, N, generator=g, dtype=torch.float64)
    gain = 0.6 + 0.8 * torch.rand(T, generator=g, dtype=torch.float64)
    weight = torch.randn(T, N, generator=g, dtype=torch.float64)
    return current, gain, weight


def run(impl: str, current, lam, theta, omega, gain, form):
    """Spikes ``[T, N]`` and the gain tensor the gradient is taken for (None for LIF).

    ``"reference"``: the per-step math; ``"fused"``: the fused kernel (no BatchNorm) on
    ``[T, N, 1]`` through a LIF/DLIF module holding these hyper-parameters and gains.
    """
    if impl == "reference":
        g = gain.clone().requires_grad_(True) if gain is not None else None
        return lif_multistep_reference(current, lam, theta, omega, g, form or "leak")[0], g
    T = current.shape[0]
    kwargs = {"gain_form": form} if form else {}
    neuron = build_neuron("dlif" if form else "lif", T, leak=lam, threshold=theta, surrogate_width=omega, **kwargs)
    neuron = neuron.double()
    if form:
        with torch.no_grad():
            neuron.gain.copy_(gain)
    return fused_lif(current.unsqueeze(-1), neuron, T).squeeze(-1), (neuron.gain if form else None)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("form", [None, "leak", "input"])
@pytest.mark.parametrize("omega", [1.0, 0.5])
def test_bptt_matches_slow_transcription(impl, form, omega):
    T, N, lam, theta = 7, 6, 0.9, 1.0
    current, gain, weight = _inputs(T, N, seed=11)
    c1, c2 = current.clone().requires_grad_(True), current.clone().requires_grad_(True)
    g2 = gain.clone().requires_grad_(True) if form is not None else None
    s, g1 = run(impl, c1, lam, theta, omega, gain if form is not None else None, form)
    s_slow = slow_forward(c2, lam, theta, omega, g2, form or "leak")
    assert torch.equal(s, s_slow.detach())
    grads = torch.autograd.grad((s * weight).sum(), [c1] + ([g1] if g1 is not None else []))
    grads_slow = torch.autograd.grad((s_slow * weight).sum(), [c2] + ([g2] if g2 is not None else []))
    assert grads[0].abs().sum() > 0
    for got, want in zip(grads, grads_slow):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["leak", "input"])
def test_dlif_gain_receives_gradient(form):
    T = 5
    layer = DLIF(T, gain_form=form)
    current = 0.5 + 0.3 * torch.randn(T, 4, 8, generator=torch.Generator().manual_seed(0))
    layer(current).sum().backward()
    grad = layer.gain.grad
    assert grad is not None and grad.shape == (T,)
    assert grad[1:].abs().min() > 0  # a[0] multiplies u[0] = 0 in the "leak" form
    if form == "input":
        assert grad[0] != 0
