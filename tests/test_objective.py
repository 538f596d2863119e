"""Eqs. 16-17 (with Eq. 14 / 12 / 13 as R) from a tiny model's outputs, and the training step."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from stable_snn.config import ObjectiveConfig
from stable_snn.models import Features, build_model
from stable_snn.objective import PassOutput, TwoPass, build_optimizer, build_perturbation, stable_loss, train_step
from stable_snn.regularizers import snn_rat_step
from stable_snn.attacks import RFGSM, GaussianNoise

T, B, CLASSES, LAM = 3, 4, 10, 0.99


def tiny(neuron: str = "dlif", name: str = "vgg5", **kwargs):
    """A tiny VGG5 with threshold 0.5: with theta = 1 its freshly initialised classifier layers
    stay silent, so the last layer's input current would not depend on the image at all."""
    torch.manual_seed(0)  # weight init only
    kwargs.setdefault("threshold", 0.5)
    return build_model(name, CLASSES, T, neuron, width=0.125, classifier_width=32, **kwargs)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, 32, 32, generator=g)
    y = torch.randint(0, CLASSES, (B,), generator=g)
    x_pert = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, x_pert, y


def ce_slow(logits_tb: list, labels: list[int]) -> float:
    """CE of the time-averaged logits (decoding of Sec. 3.4), batch mean, plain Python."""
    Tn, Bn, C = len(logits_tb), len(logits_tb[0]), len(logits_tb[0][0])
    total = 0.0
    for b in range(Bn):
        z = [sum(logits_tb[t][b][c] for t in range(Tn)) / Tn for c in range(C)]
        m = max(z)
        total += m + math.log(sum(math.exp(v - m) for v in z)) - z[labels[b]]
    return total / Bn


def ms_mppd_slow(delta: torch.Tensor, leak: list[float], scale: list[float], reduction: str,
                 norm=lambda e: e**2) -> float:
    """Eq. 11 then Eq. 14 (``norm``: the square; ``abs`` for MPPD-TV-l1) on the flattened last-layer
    current difference ``delta`` [T, B, N]."""
    Tn, Bn = delta.shape[:2]
    d = delta.reshape(Tn, Bn, -1).tolist()
    N = len(d[0][0])
    per_sample = []
    for b in range(Bn):
        acc = 0.0
        for i in range(N):
            eps = 0.0
            for t in range(Tn):
                eps = leak[t] * eps + scale[t] * d[t][b][i]
                acc += norm(eps)
        per_sample.append(acc)
    return sum(per_sample) / Bn if reduction == "sum" else sum(per_sample) / (Tn * Bn * N)


def _outputs(model, seed=0):
    x, x_pert, y = batch(seed)
    clean, pert = TwoPass(model)(x, x_pert)
    return clean, pert, y


@pytest.mark.parametrize("form", ["leak", "input"])
@pytest.mark.parametrize("mppd_leak", ["lambda", "dlif"])
@pytest.mark.parametrize("regularizer", ["ms_mppd", "mppd_tv_l1"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chi,rho", [(0.5, 1.0), (0.3, 2.0), (1.0, 0.5)])
def test_eq16_17_with_mppd_regularizers(form, mppd_leak, regularizer, reduction, chi, rho):
    """The MPPD regularisers against a slow transcription: by default (the authors' recursion) leak lam
    on the pre-gain current difference; with mppd_leak dlif the layer's DLIF dynamics."""
    model = tiny(gain_form=form).train()
    a = torch.tensor([0.8, 1.1, 0.9])
    with torch.no_grad():
        for layer in model.spiking_layers():
            layer.gain.copy_(a)
    clean, pert, y = _outputs(model)
    cfg = ObjectiveConfig(mode="at", chi=chi, rho=rho, reduction=reduction, regularizer=regularizer,
                          mppd_leak=mppd_leak)
    terms = stable_loss(model, clean, pert, y, cfg)
    ce_c = ce_slow(clean.logits.tolist(), y.tolist())
    ce_p = ce_slow(pert.logits.tolist(), y.tolist())
    delta = (clean.features.last_current - pert.features.last_current).double()
    if mppd_leak == "lambda":
        leak, scale = [LAM] * T, [1.0] * T
    elif form == "leak":
        leak, scale = [LAM * v for v in a.tolist()], [1.0] * T
    else:
        leak, scale = [LAM] * T, a.tolist()
    r = ms_mppd_slow(delta, leak, scale, reduction, abs if regularizer == "mppd_tv_l1" else (lambda e: e**2))
    assert r > 0
    assert terms.ce_clean.item() == pytest.approx(ce_c, rel=1e-5)
    assert terms.ce_pert.item() == pytest.approx(ce_p, rel=1e-5)
    assert terms.task.item() == pytest.approx(chi * ce_c + (1 - chi) * ce_p, rel=1e-5)
    assert terms.stability.item() == pytest.approx(r, rel=1e-4)
    assert terms.total.item() == pytest.approx(chi * ce_c + (1 - chi) * ce_p + rho * r, rel=1e-4)
    torch.testing.assert_close(terms.logits_clean, clean.logits.mean(0))


@pytest.mark.parametrize("regularizer", ["tasad", "std"])
def test_eq17_with_spike_distances(regularizer):
    model = tiny("lif").train()
    clean, pert, y = _outputs(model, seed=1)
    cfg = ObjectiveConfig(mode="gaussian", regularizer=regularizer, rho=1.0)
    terms = stable_loss(model, clean, pert, y, cfg)
    s, s_p = clean.features.spikes[-1], pert.features.spikes[-1]
    Tn, Bn = s.shape[:2]
    s, s_p = s.reshape(Tn, Bn, -1).tolist(), s_p.reshape(Tn, Bn, -1).tolist()
    r = 0.0
    for b in range(Bn):
        if regularizer == "tasad":  # Eq. 12
            sq = sum(((sum(s[t][b][i] for t in range(Tn)) - sum(s_p[t][b][i] for t in range(Tn))) / Tn) ** 2
                     for i in range(len(s[0][0])))
        else:  # Eq. 13
            sq = sum((s[t][b][i] - s_p[t][b][i]) ** 2 for t in range(Tn) for i in range(len(s[0][0])))
        r += math.sqrt(sq) / Bn
    assert terms.stability.item() == pytest.approx(r, rel=1e-4, abs=1e-5)
    task = 0.5 * ce_slow(clean.logits.tolist(), y.tolist()) + 0.5 * ce_slow(pert.logits.tolist(), y.tolist())
    assert terms.total.item() == pytest.approx(task + r, rel=1e-4, abs=1e-5)


def test_natural_and_rho_zero():
    model = tiny("lif").train()
    clean, pert, y = _outputs(model)
    nat = stable_loss(model, clean, None, y, ObjectiveConfig(mode="natural"))
    assert nat.total.item() == pytest.approx(ce_slow(clean.logits.tolist(), y.tolist()), rel=1e-5)
    assert nat.ce_pert is None and nat.stability is None
    zero = stable_loss(model, clean, pert, y, ObjectiveConfig(mode="at", rho=0.0))
    assert zero.total.item() == pytest.approx(zero.task.item())


def test_clean_branch_of_ms_mppd_is_detached():
    model = tiny()
    g = torch.Generator().manual_seed(0)
    cur_c = torch.randn(T, B, 32, generator=g, requires_grad=True)
    cur_p = torch.randn(T, B, 32, generator=g, requires_grad=True)
    logits = torch.randn(T, B, CLASSES, generator=g)
    spikes = (torch.zeros(T, B, 32),)
    y = torch.zeros(B, dtype=torch.long)
    clean = PassOutput(logits, Features(torch.zeros(T, B, 32), cur_c, spikes))
    pert = PassOutput(logits, Features(torch.zeros(T, B, 32), cur_p, spikes))
    terms = stable_loss(model, clean, pert, y, ObjectiveConfig())
    g_c, g_p = torch.autograd.grad(terms.stability, [cur_c, cur_p], allow_unused=True)
    assert g_c is None
    assert g_p is not None and g_p.abs().sum() > 0


def test_two_pass_is_one_module_call_of_features_and_head():
    """Both passes in one module call (one forward per backward under DDP), each features + head."""
    model = tiny().eval()
    x, x_pert, _ = batch()
    two = TwoPass(model, record_spikes=False)
    calls = []
    handle = two.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            clean, pert = two(x, x_pert)
    finally:
        handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        for out, images in ((clean, x), (pert, x_pert)):
            features = model.forward_features(images)
            assert torch.equal(out.logits, model(images))
            assert torch.equal(out.features.last_current, features.last_current)
            assert out.features.spikes == ()
        recorded, _ = TwoPass(model)(x)
    assert len(recorded.features.spikes) == len(model.spiking_layers())


def test_spike_regularizers_need_recorded_spikes():
    model = tiny("lif").train()
    x, x_pert, y = batch()
    clean, pert = TwoPass(model, record_spikes=False)(x, x_pert)
    with pytest.raises(ValueError, match="record_spikes"):
        stable_loss(model, clean, pert, y, ObjectiveConfig(mode="gaussian", regularizer="tasad"))


@pytest.mark.parametrize("form", ["leak", "input"])
@pytest.mark.parametrize("mppd_leak", ["lambda", "dlif"])
@pytest.mark.parametrize("regularizer", ["ms_mppd", "mppd_tv_l1"])
def test_the_mppd_regularizer_never_pushes_the_regularised_layers_gains(form, mppd_leak, regularizer):
    """The gains a[t] of the last spiking layer are outside R's graph in either MPPD form: dR/da is
    exactly zero (R still reaches every weight), while the task loss trains them."""
    model = tiny(gain_form=form).train()
    clean, pert, y = _outputs(model)
    cfg = ObjectiveConfig(mode="at", rho=1.0, regularizer=regularizer, mppd_leak=mppd_leak)
    terms = stable_loss(model, clean, pert, y, cfg)
    last = model.spiking_layers()[-1]
    (dr_da,) = torch.autograd.grad(terms.stability, [last.gain], allow_unused=True, retain_graph=True)
    assert dr_da is None or torch.equal(dr_da, torch.zeros_like(dr_da))
    dr_dw = torch.autograd.grad(terms.stability, [model.classifier[-1].linear.weight], retain_graph=True)[0]
    assert dr_dw.abs().sum() > 0
    (dce_da,) = torch.autograd.grad(terms.task, [last.gain])
    assert dce_da.abs().sum() > 0


def test_build_perturbation_per_mode():
    assert build_perturbation(ObjectiveConfig(mode="natural")) is None
    assert isinstance(build_perturbation(ObjectiveConfig(mode="gaussian")), GaussianNoise)
    for mode in ("at", "at_reg"):
        p = build_perturbation(ObjectiveConfig(mode=mode, rfgsm_step=2 / 255))
        assert isinstance(p, RFGSM) and p.step == pytest.approx(2 / 255)


@pytest.mark.parametrize("mode", ["natural", "gaussian", "at", "at_reg"])
def test_train_step_updates_and_is_reproducible(mode):
    model_a = tiny().train()
    model_b = copy.deepcopy(model_a)
    x, _, y = batch(2)
    cfg = ObjectiveConfig(mode=mode, rho=1.0, beta=1e-3)
    stats = []
    for model in (model_a, model_b):
        opt = build_optimizer(model, lr=0.05, momentum=0.9, weight_decay=0.0)
        stats.append(train_step(model, opt, x, y, cfg, generator=torch.Generator().manual_seed(3),
                                reg_generator=torch.Generator().manual_seed(4)))
    st = stats[0]
    assert st.finite and st.batch == B and 0 <= st.correct_clean <= B
    assert math.isfinite(st.loss)
    if mode == "natural":
        assert st.ce_pert is None and st.stability is None and st.loss == pytest.approx(st.ce_clean)
    else:
        assert st.stability is not None and st.stability >= 0
        assert st.loss == pytest.approx(st.task_loss + st.stability, rel=1e-5)
    assert stats[0] == stats[1]
    before = tiny().state_dict()
    after = model_a.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    for k in after:
        assert torch.equal(after[k], model_b.state_dict()[k]), k


def test_at_reg_is_at_followed_by_the_snn_rat_step():
    """``at_reg`` = one ``at`` step (same model copy, batch and attack seed) then :func:`snn_rat_step`
    with the config's beta and row settings and the step's ``reg_generator``; the Linear layers have
    32 >= 8 outputs, so a random 30 % of their rows is retracted, drawn from that generator."""
    model_reg = tiny().train()
    model_at = copy.deepcopy(model_reg)
    x, _, y = batch(5)
    settings = dict(rho=1.0, beta=1e-2, reg_row_fraction=0.3, reg_row_min_outputs=8)
    for model, mode in ((model_reg, "at_reg"), (model_at, "at")):
        opt = build_optimizer(model, lr=0.05, momentum=0.9, weight_decay=0.0)
        train_step(model, opt, x, y, ObjectiveConfig(mode=mode, **settings), generator=torch.Generator().manual_seed(3),
                   reg_generator=torch.Generator().manual_seed(4))
    at_only = {k: v.clone() for k, v in model_at.state_dict().items()}
    snn_rat_step(model_at, 1e-2, torch.Generator().manual_seed(4), row_fraction=0.3, min_outputs=8)
    reg, by_hand = model_reg.state_dict(), model_at.state_dict()
    assert reg.keys() == by_hand.keys()
    for k in reg:
        torch.testing.assert_close(reg[k], by_hand[k], rtol=0.0, atol=1e-7, msg=k)
    differs = [k for k in reg if reg[k].is_floating_point() and (reg[k] - at_only[k]).abs().max() > 1e-5]
    assert {"features.0.conv.weight", "classifier.0.linear.weight", "classifier.1.linear.weight"} <= set(differs)


@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_one_batched_pass_computes_the_two_passes(backend):
    """``TwoPass(batched=True)``, one pass over ``[x; x_pert]`` with training-mode BatchNorm statistics
    per half, computes what two passes compute: the logits and last-layer currents of each batch,
    the parameter gradients of a loss over both, and the BatchNorm running statistics after it."""
    outs = {}
    for batched in (False, True):
        model = tiny(backend=backend).train()
        x, x_pert, y = batch()
        clean, pert = TwoPass(model, record_spikes=False, batched=batched)(x, x_pert)
        loss = (torch.nn.functional.cross_entropy(clean.logits.mean(0), y)
                + torch.nn.functional.cross_entropy(pert.logits.mean(0), y)
                + (pert.features.last_current - clean.features.last_current).square().mean())
        grads = torch.autograd.grad(loss, list(model.parameters()))
        stats = [b.clone() for n, b in model.named_buffers() if "running" in n]
        outs[batched] = [clean.logits, pert.logits, pert.features.last_current, *grads, *stats]
    assert len(outs[True]) > 8
    for two, one in zip(outs[False], outs[True]):
        torch.testing.assert_close(one, two, rtol=1e-4, atol=1e-5)
