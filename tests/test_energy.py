"""Firing rates and SOPs: a direct count on the reference transcription's spikes; the same on every backend."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from stable_snn.energy import activity
from stable_snn.models import build_model, list_models
from stable_snn.reference import reference_features

T, B = 3, 2


def tiny(name: str, backend: str = "eager") -> torch.nn.Module:
    torch.manual_seed(0)  # weight init only; threshold 0.5 keeps the tiny network active
    model = build_model(name, 10, T, "dlif", backend=backend, width=0.125, classifier_width=24, threshold=0.5)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.train()(x)  # BatchNorm statistics of an active network
    return model.eval()


def images() -> torch.Tensor:
    return torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def count(inputs: list[torch.Tensor], fan_outs: list[float]) -> tuple[float, float]:
    """SOPs (binary inputs: one accumulate per spike and target) and dense MACs, summed over layers."""
    sops = macs = 0.0
    for x, fan in zip(inputs, fan_outs):
        if binary(x):
            sops += float((x != 0).sum()) * fan
        else:
            macs += x.numel() * fan
    return sops, macs


def test_vgg_counts_match_a_direct_count():
    """VGG5: conv inputs are the repeated image, then the (pooled) spikes; the classifier's the spikes."""
    model = tiny("vgg5")
    x = images()
    with torch.no_grad():
        features = reference_features(copy.deepcopy(model), x)
    seq = ((x - model.mean) / model.std).unsqueeze(0).repeat(T, 1, 1, 1, 1)
    n_conv = len(model.features)
    inputs, fans = [seq], []
    for block, s in zip(model.features, features.spikes[:n_conv]):
        k = block.conv
        fans.append(k.out_channels * k.kernel_size[0] * k.kernel_size[1] / (k.stride[0] * k.stride[1]))
        inputs.append(F.avg_pool2d(s.flatten(0, 1), 2).unflatten(0, (T, B)) if block.pool is not None else s)
    inputs = inputs[:n_conv] + [inputs[n_conv]] + list(features.spikes[n_conv:])
    fans += [float(b.linear.out_features) for b in model.classifier] + [float(model.head.out_features)]
    sops, macs = count(inputs, fans)
    report = activity(model, x)
    assert report.sops_per_image == pytest.approx(sops / B, rel=1e-9)
    assert report.dense_macs_per_image == pytest.approx(macs / B, rel=1e-9)
    assert sops > 0 and macs > 0
    names = [n for n, _ in model.named_modules() if n.endswith("neuron")]
    assert list(report.firing_rates) == names
    for rate, s in zip(report.firing_rates.values(), features.spikes):
        assert rate == pytest.approx(float(s.mean()), abs=1e-3)  # a rare threshold tie may flip a spike


@pytest.mark.parametrize("name", list_models())
def test_activity_is_the_same_on_every_backend(name):
    """Static inputs (computed once on the fused backends) count for their T steps.

    "compiled" runs the blocks of "eager" with other kernels; it is left out (compilation costs seconds).
    """
    model = tiny(name)
    reports = []
    for backend in ("reference", "eager"):
        model.backend = backend
        reports.append(activity(model, images()))
    assert not model.training  # restored
    first = reports[0]
    for r in reports[1:]:
        assert r.dense_macs_per_image == pytest.approx(first.dense_macs_per_image, rel=1e-9)
        assert r.sops_per_image == pytest.approx(first.sops_per_image, rel=1e-3)
        assert r.firing_rates.keys() == first.firing_rates.keys()
        for k in first.firing_rates:
            assert r.firing_rates[k] == pytest.approx(first.firing_rates[k], abs=1e-3)


def hand_set_vgg5(backend: str) -> torch.nn.Module:
    """VGG5 (width 0.125, classifier width 4, LIF, threshold 1, T = 2) whose synaptic weights are all zero,
    so each neuron's input current is a constant it gets from a bias: BatchNorm (eval, weight 0) emits its
    bias, a Linear its bias.  1.5 (>= 1, above threshold after any reset) spikes every step, -1 never."""
    model = build_model("vgg5", 10, 2, "lif", backend=backend, width=0.125, classifier_width=4)
    on, off = 1.5, -1.0
    bn_biases = [[on] * 4 + [off] * 4, [off] * 16, [on] * 16]  # features.0 / .1 / .2 channels
    linear_biases = [[on, off, off, off], [on, on, on, off]]  # classifier.0 / .1 neurons
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for block, bias in zip(model.features, bn_biases):
            block.bn.running_mean.zero_()
            block.bn.running_var.fill_(1.0)
            block.bn.bias.copy_(torch.tensor(bias))
        for block, bias in zip(model.classifier, linear_biases):
            block.linear.bias.copy_(torch.tensor(bias))
    return model.eval()


@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_firing_rates_and_sops_of_a_hand_set_network(backend):
    """Counted by hand, per image, over T = 2 steps:

    * firing rates: features.0 4 of 8 channels = 0.5; features.1 none = 0; features.2 all = 1;
      classifier.0 1 of 4 = 0.25; classifier.1 3 of 4 = 0.75.
    * features.0's conv sees the normalised image (not binary): dense MACs 3*32*32 inputs x
      8 channels * 3*3 fan-out = 221184 per step, 442368 per image.
    * features.1's conv sees features.0's spikes average-pooled 2x2; whole channels spike, so the pooled
      map is still binary: 4*16*16 = 1024 spikes x 16*3*3 = 144 fan-out = 147456 per step.
    * features.2's conv sees no spike: 0.  classifier.0 sees features.2's 16 channels pooled to 8x8, all
      ones: 1024 spikes x 4 outputs = 4096.  classifier.1: 1 spike x 4 = 4.  head: 3 spikes x 10 = 30.
    * SOPs per image: 2 * (147456 + 4096 + 4 + 30) = 303172.
    """
    report = activity(hand_set_vgg5(backend), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert report.firing_rates == {"features.0.neuron": 0.5, "features.1.neuron": 0.0, "features.2.neuron": 1.0,
                                   "classifier.0.neuron": 0.25, "classifier.1.neuron": 0.75}
    assert report.sops_per_image == 303172.0
    assert report.dense_macs_per_image == 442368.0
