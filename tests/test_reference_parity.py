"""The fused backend against the reference transcription of the authors' loop (stable_snn.reference), fp32.

Same weights (the reference reads the same parameters and buffers), same batch: forward outputs,
the last layer's input current, MS-MPPD, the loss terms and the gradients of every weight,
DLIF gain and input agree to fp32 round-off; a whole training step (RFGSM, both passes,
BatchNorm statistics) agrees too.
"""
from __future__ import annotations

import copy

import pytest
import torch

from stable_snn.config import ObjectiveConfig
from stable_snn.models import build_model
from stable_snn.objective import TwoPass, stable_loss, train_step
from stable_snn.reference import (
    reference_forward, reference_loss, reference_pass, reference_pgd, reference_rfgsm, reference_train_step,
)
from stable_snn.attacks import PGD, RFGSM

T, B, CLASSES = 3, 6, 10
MODELS = [("vgg5", "lif", "leak"), ("vgg5", "dlif", "leak"), ("vgg5", "dlif", "input"), ("wrn16", "dlif", "leak")]
RTOL, ATOL = 1e-4, 1e-5


def tiny(name: str, neuron: str, form: str) -> torch.nn.Module:
    torch.manual_seed(0)  # weight init only; threshold 0.5 keeps the tiny classifier active
    width = 0.25 if name == "vgg5" else 0.125
    model = build_model(name, CLASSES, T, neuron, width=width, classifier_width=48, gain_form=form, threshold=0.5)
    with torch.no_grad():
        for layer in model.spiking_layers():
            if layer.gains() is not None:
                layer.gain.uniform_(0.8, 1.2, generator=torch.Generator().manual_seed(1))
    return model


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, 32, 32, generator=g)
    y = torch.randint(0, CLASSES, (B,), generator=g)
    x_pert = (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, x_pert, y


def assert_close(a, b, what):
    torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def assert_grad_close(name: str, g: torch.Tensor, r: torch.Tensor, largest: float) -> None:
    """``g`` against the reference ``r`` relative to ``r``'s size; a conv bias before BatchNorm (in
    train mode) has a true gradient of 0, so there both must be round-off next to the ``largest``."""
    if name.endswith("conv.bias"):
        assert float(g.abs().max()) < 1e-5 * largest and float(r.abs().max()) < 1e-5 * largest, f"gradient of {name}"
        return
    assert float((g - r).abs().max() / r.abs().max().clamp_min(1e-12)) < 1e-4, f"gradient of {name}"


@pytest.mark.parametrize("name,neuron,form", MODELS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_matches_reference(name, neuron, form, mode):
    model = tiny(name, neuron, form)
    twin = copy.deepcopy(model)
    model.train(mode == "train")
    twin.train(mode == "train")
    x, _, _ = batch()
    assert model.backend == "eager"
    with torch.no_grad():
        fast = model.forward_features(x, record_spikes=True)
        ref_logits, ref = reference_pass(twin, x)
        assert_close(model.forward_head(fast), ref_logits, "logits")
    assert_close(fast.pre_logits, ref.pre_logits, "pre-logits")
    assert_close(fast.last_current, ref.last_current, "last current")
    assert len(fast.spikes) == len(ref.spikes) == len(model.spiking_layers())
    for i, (s, r) in enumerate(zip(fast.spikes, ref.spikes)):
        assert s.shape == r.shape
        assert (s != r).float().mean() < 1e-3, f"spikes of layer {i}"
    for (n, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert_close(a, b, f"buffer {n} after the {mode} pass")


@pytest.mark.parametrize("name,neuron,form", MODELS)
def test_loss_and_gradients_match_reference(name, neuron, form):
    """Eq. 17 from the two passes: loss terms (incl. MS-MPPD) and d/d(weights, gains, inputs)."""
    cfg = ObjectiveConfig(mode="at", rho=1.0, chi=0.5)
    model = tiny(name, neuron, form).train()
    twin = copy.deepcopy(model)
    x, x_pert, y = batch(1)
    inputs = [t.clone().requires_grad_(True) for t in (x, x_pert)]
    inputs_ref = [t.clone().requires_grad_(True) for t in (x, x_pert)]

    clean, pert = TwoPass(model, record_spikes=False)(*inputs)
    terms = stable_loss(model, clean, pert, y, cfg)
    ref_terms = reference_loss(twin, reference_pass(twin, inputs_ref[0]), reference_pass(twin, inputs_ref[1]), y, cfg)
    for key, value in (("total", terms.total), ("ce_clean", terms.ce_clean), ("ce_pert", terms.ce_pert),
                       ("stability", terms.stability)):
        assert_close(value, ref_terms[key], key)
    assert float(terms.stability.detach()) > 0

    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(terms.total, params + inputs, allow_unused=True)
    ref_grads = torch.autograd.grad(ref_terms["total"], list(twin.parameters()) + inputs_ref, allow_unused=True)
    names = [n for n, _ in model.named_parameters()] + ["x", "x_pert"]
    largest = max(float(r.abs().max()) for r in ref_grads if r is not None)
    for n, g, r in zip(names, grads, ref_grads):
        if r is None:
            assert g is None or not g.any(), n
            continue
        assert_grad_close(n, g, r, largest)
    gain_grads = [g for n, g in zip(names, grads) if n.endswith("gain")]
    if neuron == "dlif":
        assert gain_grads and all(g.abs().sum() > 0 for g in gain_grads)
    assert grads[-1].abs().sum() > 0 and grads[-2].abs().sum() > 0


@pytest.mark.parametrize("name,neuron,form", MODELS[:2] + MODELS[3:])
def test_training_step_matches_reference(name, neuron, form):
    """A whole ``at`` step: RFGSM (the reference's wasted pass changes nothing), both passes, update."""
    cfg = ObjectiveConfig(mode="at", rho=1.0, chi=0.5)
    model = tiny(name, neuron, form)
    twin = copy.deepcopy(model)
    x, _, y = batch(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt_ref = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    stats = train_step(model, opt, x, y, cfg, generator=torch.Generator().manual_seed(3))
    ref = reference_train_step(twin, opt_ref, x, y, cfg, generator=torch.Generator().manual_seed(3))
    assert stats.loss == pytest.approx(ref["total"], rel=1e-5)
    assert stats.stability == pytest.approx(ref["stability"], rel=1e-4)
    largest = max(float(q.grad.abs().max()) for q in twin.parameters())
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert_grad_close(n, p.grad, q.grad, largest)
        assert_close(p.detach(), q.detach(), f"updated {n}")
    for (n, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert_close(a, b, f"buffer {n}")


@pytest.mark.parametrize("name,neuron,form", [MODELS[1], MODELS[3]])
def test_attacks_match_reference(name, neuron, form):
    model = tiny(name, neuron, form)
    x, _, y = batch(3)
    with torch.no_grad():
        model.train()(x)  # BatchNorm statistics of an active network
    twin = copy.deepcopy(model)
    adv = RFGSM()(model, x, y, torch.Generator().manual_seed(4))
    adv_ref = reference_rfgsm(twin, x, y, 4 / 255, 0.001, torch.Generator().manual_seed(4))
    assert (adv - adv_ref).abs().max() < 1e-6
    adv = PGD(steps=3)(model, x, y, torch.Generator().manual_seed(5))
    adv_ref = reference_pgd(twin, x, y, steps=3, generator=torch.Generator().manual_seed(5))
    assert (adv - adv_ref).abs().max() < 1e-6


@pytest.mark.parametrize("name", ["vgg5", "wrn16"])
def test_reference_backend_is_the_reference_transcription(name):
    """The model's own "reference" backend (its blocks, per-step neurons) and the transcription agree."""
    model = tiny(name, "dlif", "leak").eval()
    model.backend = "reference"
    x, _, _ = batch(4)
    with torch.no_grad():
        assert_close(reference_forward(model, x), model(x), "logits")
