"""ASSG + SA-PGD (Wang et al., CVPR 2026): the adaptive sharpness against a direct transcription of its
running statistics, SA-PGD against a slow per-sample transcription of its loop, and on a trained spiking
network whose too-sharp surrogate hides its weakness from PGD."""
from __future__ import annotations

import math

import pytest
import torch

from stable_snn.attacks import ASSG, PGD, SAPGD, AdaptiveSharpness, adaptive_sharpness, apgd_checkpoints
from stable_snn.attacks.apgd import ce_loss
from stable_snn.neurons import Triangle, arctan_grad, spiking_layers, triangle_grad
from tests.attacks.helpers import accuracy
from tests.attacks.test_apgd import SmoothNet, one_sample


@pytest.mark.parametrize("shape", ["arctan", "triangle"])
def test_adaptive_sharpness_follows_its_running_statistics(shape):
    config = ASSG(shape=shape, bound=0.425 if shape == "arctan" else 0.8, relax=1.5, beta1=0.9, beta2=0.8)
    surrogate = AdaptiveSharpness(config, timesteps=2)
    g = torch.Generator().manual_seed(0)
    potentials = [torch.randn(3, 4, generator=g) * 2 for _ in range(5)]
    m, d = [[1.0] * 4 for _ in range(3)], [[0.0] * 4 for _ in range(3)]  # per sample and neuron, for step 1
    a = 2 * math.tan(math.pi * 0.425) / math.pi if shape == "arctan" else 0.8
    for v in potentials:
        got = surrogate.derivative(v, 1.0, step=1)
        for i in range(3):
            for j in range(4):
                dist = abs(v[i, j].item() - 1.0)
                m[i][j] = 0.9 * m[i][j] + 0.1 * dist
                d[i][j] = 0.8 * d[i][j] + 0.2 * abs(dist - m[i][j])
        alpha = torch.tensor([[a / (m[i][j] + 1.5 * d[i][j] + 1e-4) for j in range(4)] for i in range(3)])
        expected = arctan_grad(v, 1.0, alpha) if shape == "arctan" else triangle_grad(v, 1.0, 1 / alpha)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert surrogate.first[0] == 1.0 and surrogate.spread[0] == 0.0  # step 0 never seen: untouched
    with pytest.raises(ValueError, match="one attacked batch"):
        surrogate.derivative(torch.zeros(2, 4), 1.0, step=1)


def sapgd_reference(model, x, y, *, eps, steps, mu, nu, noise):
    """The SA-PGD loop of sapgd.py for one sample ``x`` [C, H, W] (the model's own gradient)."""
    proj, f = one_sample(model, x, y, eps, ce_loss)
    halve = apgd_checkpoints(steps)[1:]
    x_k = proj(x + (2 * noise - 1) * eps)
    loss, grad, fooled = f(x_k)
    adv = x_k if fooled else None
    best, best_loss, eta, m, v = x_k, loss, eps, None, None
    for k in range(steps):
        g1 = grad / grad.abs().mean()
        g2 = grad ** 2 / (grad ** 2).mean()
        m = g1 if m is None else mu * m + g1
        v = g2 if v is None else nu * v + g2
        x_k = proj(x_k + (eta * m / (v.sqrt() + 1e-12)).clamp(-eta, eta))
        loss, grad, fooled = f(x_k)
        if fooled and adv is None:
            adv = x_k
        if loss > best_loss:
            best, best_loss = x_k, loss
        if k + 1 in halve:
            eta /= 2
    return adv if adv is not None else best


@pytest.mark.parametrize("steps, eps", [(10, 0.05), (30, 0.1)])
def test_sapgd_matches_slow_transcription(steps, eps):
    model = SmoothNet()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 5  # misclassified from the start: returned unchanged
    adv = SAPGD(eps=eps, steps=steps, momentum=0.5, second_moment=0.8, assg=None)(
        model, x, y, torch.Generator().manual_seed(4))
    noise = torch.rand((22, 3, 4, 4), generator=torch.Generator().manual_seed(4))
    expected = x.clone()
    for j, i in enumerate(range(2, 24)):
        expected[i] = sapgd_reference(model, x[i], y[i], eps=eps, steps=steps, mu=0.5, nu=0.8, noise=noise[j])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.equal(adv[:2], x[:2]) and (model(adv).argmax(1) != y).any()


def test_assg_changes_only_the_backward_and_restores_the_model(tiny_model, batch):
    x, y = batch
    with torch.no_grad():
        before = tiny_model(x)
    assert tiny_model.backend == "eager"
    with adaptive_sharpness(tiny_model, ASSG()) as surrogates:
        assert tiny_model.backend == "reference"
        assert [n for n, _ in spiking_layers(tiny_model)] == list(surrogates)
        with torch.no_grad():
            assert torch.allclose(tiny_model(x), before, atol=1e-5)  # the same forward function
        assert all(s.first == [1.0, 1.0] for s in surrogates.values())  # a forward pass alone observes nothing
        xi = x.clone().requires_grad_(True)
        tiny_model(xi).mean(0).logsumexp(1).sum().backward()
        assert all(isinstance(s.first[1], torch.Tensor) for s in surrogates.values())  # the backward observed
    assert tiny_model.backend == "eager" and all(m.surrogate == Triangle(1.0) for _, m in spiking_layers(tiny_model))


@pytest.mark.slow  # trains a model (once per session)
@pytest.mark.timeout(60)
def test_assg_sapgd_sees_through_a_too_sharp_training_surrogate(trained):
    """The trained network declared with a too-sharp triangle surrogate (omega = 0.05; the forward function is
    the same, only the white-box gradient changes): most input gradients vanish, so PGD-10 and even APGD-CE-100
    through that surrogate find the network about as robust as it is accurate. ASSG + SA-PGD finds what PGD
    through the original surrogate (omega = 1) finds: the network is not robust."""
    model, x, y = trained.model, trained.images[:64].contiguous(), trained.labels[:64]
    clean = accuracy(model, x, y)
    surrogates = [m.surrogate for _, m in spiking_layers(model)]

    def robust(attack):
        return accuracy(model, attack(model, x, y, torch.Generator().manual_seed(0)), y)

    honest = robust(PGD(eps=8 / 255, alpha=2 / 255, steps=10))
    try:
        for _, m in spiking_layers(model):
            m.surrogate = Triangle(0.05)
        misleading = robust(PGD(eps=8 / 255, alpha=2 / 255, steps=10))
        adaptive = robust(SAPGD(eps=8 / 255, steps=100))
        assert [m.surrogate for _, m in spiking_layers(model)] == [Triangle(0.05)] * len(surrogates)
    finally:
        for (_, m), s in zip(spiking_layers(model), surrogates):
            m.surrogate = s
    assert model.backend == "eager"
    assert honest <= 0.5 * clean, (honest, clean)
    assert misleading >= 0.8 * clean, (misleading, clean)  # misleadingly robust
    assert adaptive <= honest + 1 / 64 and adaptive <= 0.5 * misleading, (adaptive, honest, misleading)
