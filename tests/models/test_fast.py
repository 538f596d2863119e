"""The fast path's convolution (chunked weight gradient) and the model-level switches."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stable_snn.models import build_model, fast
from stable_snn.neurons import neuron_backend


@pytest.mark.parametrize("channels_last", [False, True])
def test_weight_gradient_matches_conv2d(channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True).double()
    x = torch.randn(7, 3, 5, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = fast.conv2d(x, conv)
    expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    got = torch.autograd.grad((y * g).sum(), [x, conv.weight, conv.bias])
    want = torch.autograd.grad((expected * g).sum(), [x, conv.weight, conv.bias])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_conv_under_autocast_matches_autocast_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast.conv2d(x, conv)
        expected = conv(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected)
    (got,) = torch.autograd.grad(y.float().sum(), conv.weight)
    (want,) = torch.autograd.grad(expected.float().sum(), conv.weight)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    assert torch.get_num_threads() == threads  # restored after the single-thread weight gradient


def test_kernels_switch_is_validated():
    model = build_model("vgg5", 10, 2, "lif", width=0.125, classifier_width=16)
    assert model.kernels == "eager"
    with pytest.raises(ValueError, match="kernels"):
        model.kernels = "cuda"


def test_fast_path_only_without_hooks_and_reference_neurons():
    model = build_model("vgg5", 10, 2, "lif", width=0.125, classifier_width=16)
    assert model.uses_fast_path()
    with neuron_backend(model, "reference"):
        assert not model.uses_fast_path()
    handle = model.layers[0].register_forward_hook(lambda *a: None)
    try:
        assert not model.uses_fast_path()
    finally:
        handle.remove()
    assert model.uses_fast_path()


@pytest.mark.parametrize("name", ["vgg5", "wrn16"])
def test_record_spikes_off_leaves_spikes_empty(name):
    torch.manual_seed(0)
    model = build_model(name, 10, 2, "dlif", width=0.125, classifier_width=16).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x, return_internals=True)
        lean = model(x, return_internals=True, record_spikes=False)
    assert lean.spikes == ()
    torch.testing.assert_close(lean.logits, full.logits)
    torch.testing.assert_close(lean.last_current, full.last_current)
