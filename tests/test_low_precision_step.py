"""One bf16 training step against the same step in fp32 (CPU autocast, emulated bf16: tiny shapes only).

A freshly initialised spiking network is chaotic under rounding: a current a bf16 rounding away
from the threshold flips a spike, and the flip moves the whole step (an fp32 step from weights merely
rounded to bf16 moves as far).  The network here keeps every membrane potential at least 0.4 from the
threshold (BatchNorm scale 0.05 around biases 1.6 and 0.2, small classifier weights), so no spike can
flip and the two steps differ by bf16 rounding alone.
"""
from __future__ import annotations

import copy

import pytest
import torch

from stable_snn.config import ObjectiveConfig
from stable_snn.models import build_model
from stable_snn.neurons import LIF
from stable_snn.neurons import modules as neuron_modules
from stable_snn.objective import build_optimizer, train_step

LOSS_RTOL = 1e-3  # bf16 keeps 8 significant bits (0.4 % per rounding); the loss averages many of them
UPDATE_RTOL = 0.06  # per parameter tensor, ||dW_bf16 - dW_fp32|| / ||dW_fp32||; worst measured: 3.5 %


def far_from_threshold(backend: str) -> torch.nn.Module:
    """VGG5, width 0.125, T = 2, LIF (threshold 1, hard reset): channels and classifier neurons alternate
    between a current of about 1.6 (a spike every step) and about 0.2 (0.2 then 0.4: never a spike)."""
    model = build_model("vgg5", 10, 2, "lif", width=0.125, classifier_width=16, backend=backend,
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for block in model.features:
            block.bn.weight.fill_(0.05)
            block.bn.bias.copy_(torch.tensor([1.6, 0.2]).repeat(block.bn.num_features // 2))
        for block in model.classifier:
            block.linear.weight.mul_(0.1)
            block.linear.bias.copy_(torch.tensor([1.6, 0.2]).repeat(block.linear.out_features // 2))
    return model.train()


def one_step(model, precision: str):
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    return train_step(model, optimizer, x, y, ObjectiveConfig(mode="natural"), precision=precision), optimizer


@pytest.mark.parametrize("backend", ["reference", "eager"])
def test_a_bf16_step_is_an_fp32_step_up_to_rounding(backend):
    start = far_from_threshold(backend)
    fp32, bf16 = copy.deepcopy(start), copy.deepcopy(start)
    stats32, _ = one_step(fp32, "fp32")
    stats16, optimizer16 = one_step(bf16, "bf16")
    assert stats16.loss != stats32.loss  # bf16 did compute something in bf16
    assert stats16.loss == pytest.approx(stats32.loss, rel=LOSS_RTOL)
    before = dict(start.named_parameters())
    for (name, p32), p16 in zip(fp32.named_parameters(), bf16.parameters()):
        assert p16.dtype == torch.float32, name  # the weights the optimiser updates stay fp32
        d32, d16 = (p32 - before[name]).detach(), (p16 - before[name]).detach()
        if name.startswith("features.") and name.endswith("conv.bias"):
            # BatchNorm follows: the exact gradient is zero, what remains is rounding noise
            assert d16.abs().max() < 1e-6, name
            continue
        assert d32.norm() > 0, name
        assert (d16 - d32).norm() / d32.norm() < UPDATE_RTOL, name
    assert all(s.dtype == torch.float32 for state in optimizer16.state.values() for s in state.values())


def test_under_bf16_the_neurons_get_bf16_currents_and_keep_an_fp32_state(monkeypatch):
    """The reference backend's LIF: its input current is bf16 under autocast, its membrane recursion
    (lif_multistep_reference) runs on fp32."""
    currents, states = [], []
    recursion = neuron_modules.lif_multistep_reference

    def recording(current, *args, **kwargs):
        states.append(current.dtype)
        return recursion(current, *args, **kwargs)

    monkeypatch.setattr(neuron_modules, "lif_multistep_reference", recording)
    model = far_from_threshold("reference")
    for m in model.modules():
        if isinstance(m, LIF):
            m.register_forward_pre_hook(lambda _, inputs: currents.append(inputs[0].dtype))
    one_step(model, "bf16")
    assert len(currents) == len(states) == 5  # one pass through the five spiking layers
    assert currents == [torch.bfloat16] * 5 and states == [torch.float32] * 5
