"""The L2 gain of Eq. 11 (Theorem 3.1 and its correction) and the exact per-layer gains of a network:
operator norms of the synapses as the network computes them, against dense matrices and Jacobians."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stable_snn.gains import (
    LayerGain, layer_gain, leak_matrix, mppd_gains, operator_norm, paper_bound_factor, source_shapes, synapse_norm,
    temporal_gain, young_bound_factor,
)
from stable_snn.models import Feed, Synapse, build_model, list_models
from stable_snn.neurons import LIF
from stable_snn.perturbation import mppd

LAM = 0.99


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def seeded(name: str, neuron: str = "dlif", T: int = 8, **kw):
    return build_model(name, 10, T, neuron, width=0.125, classifier_width=32, generator=gen(0), **kw)


# -- the temporal factor ---------------------------------------------------------------

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




# -- the operator norm of a synapse -----------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (16, 16), (1, 9)])
def test_operator_norm_of_a_matrix_matches_linalg(shape):
    M = torch.randn(*shape, generator=gen(19))
    expected = torch.linalg.matrix_norm(M.double(), ord=2).item()
    got = operator_norm(lambda xs: xs[0] @ M.T, [(1, shape[1])], generator=gen(20))
    assert got == pytest.approx(expected, rel=1e-4)
    assert operator_norm(lambda xs: 0 * xs[0] + 3.0, [(1, 4)]) == 0.0  # a constant map has no linear part


def dense_matrix(fn, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of the linear part of ``fn`` (float64), one basis input at a time."""
    n = math.prod(in_shape)
    base = fn(torch.zeros(1, *in_shape, dtype=torch.float64)).flatten()
    cols = [fn(torch.eye(n, dtype=torch.float64)[i].view(1, *in_shape)).flatten() - base for i in range(n)]
    return torch.stack(cols, 1)


def random_bn(channels: int, seed: int) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels).eval()
    g = gen(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(channels, generator=g))
    return bn


@pytest.mark.parametrize("stride,pool", [(1, False), (2, False), (1, True)])
def test_a_convolution_synapse_gain_is_the_operator_norm_of_the_convolution(stride, pool):
    """conv3x3 (+BatchNorm) at the layer's input size against the dense matrix of the convolution (built
    with F.conv2d and the BatchNorm scale by hand), not the norm of the flattened kernel."""
    cin, cout, size = 2, 3, 6
    conv = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=True)
    bn = random_bn(cout, 21)
    ops = (torch.nn.AvgPool2d(2), conv) if pool else (conv,)
    syn = Synapse("s", LIF(4), (Feed("prev", ops),), (bn,))
    in_shape = (cin, size, size)
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double()

    def by_hand(x):
        x = F.avg_pool2d(x, 2) if pool else x
        return F.conv2d(x, conv.weight.detach().double(), None, stride, 1) * scale.view(1, -1, 1, 1)

    expected = torch.linalg.matrix_norm(dense_matrix(by_hand, in_shape), ord=2).item()
    got = synapse_norm(syn, {"prev": (1, *in_shape)}, iters=300, generator=gen(22))
    assert got == pytest.approx(expected, rel=1e-4)
    flattened = torch.linalg.matrix_norm(conv.weight.detach().double().flatten(1) * scale[:, None], ord=2).item()
    assert abs(got - flattened) > 1e-3 * flattened  # the kernel as a matrix is another number


def test_vgg_synapses_follow_the_spikes_through_the_pooling():
    """A VGG layer is fed by the spikes of the layer before it through that layer's 2x2 pooling; the
    classifier's first layer sees the last conv block's pooled spikes, flattened."""
    model = seeded("vgg5", "lif").eval()
    feeds = {s.name: (s.feeds[0].source, [type(op).__name__ for op in s.feeds[0].ops]) for s in model.synapses()}
    assert feeds == {
        "features.0": (None, ["FastConv2d"]), "features.1": ("features.0", ["AvgPool2d", "FastConv2d"]),
        "features.2": ("features.1", ["FastConv2d"]),
        "classifier.0": ("features.2", ["AvgPool2d", "Flatten", "Linear"]),
        "classifier.1": ("classifier.0", ["Flatten", "Linear"]),
    }
    shapes = source_shapes(model)
    assert shapes["features.2"] == (1, 16, 16, 16)  # width 0.125: 16 channels at 16x16, before the pooling
    lin = model.classifier[0].linear
    jac = torch.autograd.functional.jacobian(
        lambda s: F.linear(F.avg_pool2d(s, 2).flatten(1), lin.weight.detach().double()).flatten(),
        torch.zeros(shapes["features.2"], dtype=torch.float64))
    expected = torch.linalg.matrix_norm(jac.reshape(jac.shape[0], -1), ord=2).item()
    syn = next(s for s in model.synapses() if s.name == "classifier.0")
    assert synapse_norm(syn, shapes, iters=300, generator=gen(25)) == pytest.approx(expected, rel=1e-4)


@pytest.fixture(scope="module")
def wrn():
    """A small WRN16 with BatchNorm statistics and residual weights away from their initial values."""
    model = build_model("wrn16", 10, 4, "lif", width=0.125, generator=gen(0)).eval()
    g = gen(23)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
        for b in model.blocks:
            w0 = torch.rand((), generator=g)
            b.combine.weight.copy_(torch.stack([w0, 1 - w0]))
    return model


@pytest.mark.parametrize("layer", ["blocks.1.pre", "blocks.2.pre", "final"])
def test_wrn_preactivation_gains_come_from_the_layers_that_feed_them(wrn, layer):
    """A pre-activation layer sees BatchNorm of the residual stream: the shortcut and conv2 of the blocks
    before it, back to a projection shortcut.  The gain is the norm of the Jacobian of the real modules
    with respect to every spike tensor that feeds the layer (8x8 images keep the Jacobian small)."""
    import copy

    m = copy.deepcopy(wrn).double()
    b = m.blocks

    def stream(block, short, spikes_mid):
        return block.combine(short, block.conv2(spikes_mid))

    oracles = {  # the spike sources of each layer, and the layer's input current from them
        "blocks.1.pre": (("blocks.0.pre", "blocks.0.mid"),
                         lambda p0, m0: b[1].pre.bn(stream(b[0], b[0].shortcut(p0), m0))),
        "blocks.2.pre": (("blocks.0.pre", "blocks.0.mid", "blocks.1.mid"),
                         lambda p0, m0, m1: b[2].pre.bn(stream(b[1], stream(b[0], b[0].shortcut(p0), m0), m1))),
        "final": (("blocks.4.pre", "blocks.4.mid", "blocks.5.mid"),
                  lambda p4, m4, m5: m.final.bn(stream(b[5], stream(b[4], b[4].shortcut(p4), m4), m5))),
    }
    sources, fn = oracles[layer]
    shapes = source_shapes(wrn, image_size=8)
    zeros = [torch.zeros(shapes[s], dtype=torch.float64) for s in sources]
    jac = torch.autograd.functional.jacobian(lambda *xs: fn(*xs).flatten(), tuple(zeros))
    dense = torch.cat([j.reshape(j.shape[0], -1) for j in jac], 1)
    expected = torch.linalg.matrix_norm(dense, ord=2).item()
    syn = next(s for s in wrn.synapses() if s.name == layer)
    assert sorted({f.source for f in syn.feeds}) == sorted(sources)
    assert synapse_norm(syn, shapes, iters=300, generator=gen(24)) == pytest.approx(expected, rel=1e-4)
    bn = syn.post[0]
    diagonal = (bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)).max().item()
    assert abs(expected - diagonal) > 1e-3 * diagonal  # the BatchNorm alone is another number


# -- per-layer gains of a network ---------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("neuron", ["lif", "dlif"])
def test_mppd_gains_one_entry_per_spiking_layer(name, neuron):
    model = seeded(name, neuron)
    gains = mppd_gains(model, iters=50)
    assert len(gains) == len(model.spiking_layers())
    assert [g.name for g in gains] == [s.name for s in model.synapses()]
    for g in gains:
        assert g.weight_norm > 0
        assert round(g.exact_gain / g.weight_norm, 2) == 5.26  # sigma_max(L_8) at lam = 0.99 (protocol)
        assert not g.bound_violated  # T = 8 with a == 1


def leak_matrix_by_hand(leak: list[float]) -> torch.Tensor:
    """L[t, k] = prod_{j=k+1..t} leak[j] for k <= t, else 0 (Eq. 11 unrolled), float64."""
    T = len(leak)
    return torch.tensor([[math.prod(leak[k + 1:t + 1]) if k <= t else 0.0 for k in range(T)] for t in range(T)],
                        dtype=torch.float64)


def test_mppd_gains_of_vgg_classifier_layers_against_their_weight_matrices():
    """VGG5's two spiking classifier layers, weight norms by torch.linalg on the weight matrices:
    classifier.1 is a plain 32x32 Linear, ||W||_2; classifier.0 is 2x2 average pooling then a Linear,
    W P with P P^T = I / 4 (each output averages four inputs of its own), so ||W P||_2 = ||W||_2 / 2.
    The exact gain is sigma_max(L_8) (L built by hand) times that norm."""
    model = seeded("vgg5", "lif").eval()
    gains = {g.name: g for g in mppd_gains(model, iters=100)}

    def norm(linear):
        return torch.linalg.matrix_norm(linear.weight.detach().double(), ord=2).item()

    expected = {"classifier.0": norm(model.classifier[0].linear) / 2, "classifier.1": norm(model.classifier[1].linear)}
    sigma_l = torch.linalg.matrix_norm(leak_matrix_by_hand([LAM] * 8), ord=2).item()
    for name, w_norm in expected.items():
        assert gains[name].weight_norm == pytest.approx(w_norm, rel=1e-4), name
        assert gains[name].exact_gain == pytest.approx(sigma_l * w_norm, rel=1e-4), name


def test_mppd_gains_flags_long_horizons():
    gains = mppd_gains(seeded("vgg5", "lif", T=30), iters=50)
    assert gains and all(g.bound_violated for g in gains)


@pytest.mark.parametrize("form", ["leak", "input"])
def test_mppd_gains_use_the_dlif_gains(form):
    T = 8
    model = seeded("vgg5", "dlif", T, gain_form=form)
    a = torch.linspace(0.5, 1.5, T)
    with torch.no_grad():
        for layer in model.spiking_layers():
            layer.gain.copy_(a)
    L = leak_matrix(LAM * a.double(), T) if form == "leak" else leak_matrix(LAM, T) * a.double()[None, :]
    sigma = torch.linalg.matrix_norm(L, ord=2).item()
    gains = mppd_gains(model, iters=50)
    for g in gains:
        assert g.exact_gain / g.weight_norm == pytest.approx(sigma, rel=1e-6)
    w_norm = torch.linalg.matrix_norm(model.classifier[1].linear.weight.detach().double(), ord=2).item()
    assert gains[-1].name == "classifier.1"  # a plain Linear: its norm by torch.linalg
    assert gains[-1].exact_gain == pytest.approx(sigma * w_norm, rel=1e-4)
    # the factor is the gain of the layer's own (DLIF) perturbation dynamics
    layer = model.spiking_layers()[-1]
    v = torch.linalg.svd(L.float()).Vh[0]
    eps = layer.perturbation_dynamics(v[:, None].clone(), "dlif")
    assert (eps.norm() / v.norm()).item() == pytest.approx(sigma, rel=1e-4)
