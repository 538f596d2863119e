"""The fused backends' convolution (single-thread low-precision weight gradient) and its module."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stable_snn.models import BACKENDS, FastConv2d, fast
from tests.threads import torch_threads


def assert_same_function(y, expected, wrt, wrt_expected):
    """Same outputs and the same gradients of a random projection with respect to the given tensors."""
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    got = torch.autograd.grad((y * g).sum(), wrt)
    want = torch.autograd.grad((expected * g).sum(), wrt_expected)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


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
    assert_same_function(y, expected, [x, conv.weight, conv.bias], [x, conv.weight, conv.bias])


def test_conv_under_autocast_matches_autocast_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast.conv2d(x, conv)
        expected = conv(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected)
    (got,) = torch.autograd.grad(y.float().sum(), conv.weight)
    (want,) = torch.autograd.grad(expected.float().sum(), conv.weight)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype, switches", [(torch.bfloat16, True), (torch.float32, False)])
def test_low_precision_weight_gradient_runs_on_one_thread_then_restores(monkeypatch, dtype, switches):
    """Under CPU bf16 autocast the weight gradient drops to ``WGRAD_THREADS`` (1) threads and
    restores the caller's count (here 2, not the suite's 1, so that a switch really happens);
    fp32 leaves the threads alone.  Every ``torch.set_num_threads`` call is recorded and passed on."""
    calls: list[int] = []
    real_set = torch.set_num_threads

    def recording_set(n: int) -> None:
        calls.append(n)
        real_set(n)

    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch_threads(2):
        monkeypatch.setattr(torch, "set_num_threads", recording_set)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = fast.conv2d(x, conv)
        torch.autograd.grad(y.float().sum(), conv.weight)
        monkeypatch.undo()
        assert torch.get_num_threads() == 2
    assert calls == ([1, 2] if switches else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_conv_module_is_a_conv2d(backend):
    """FastConv2d: the parameters and the function of nn.Conv2d (and its gradients) on every backend."""
    torch.manual_seed(0)
    fast_conv = FastConv2d(3, 4, 3, 2, 1, bias=True).double()
    fast_conv.backend = backend
    plain = nn.Conv2d(3, 4, 3, 2, 1, bias=True).double()
    plain.load_state_dict(fast_conv.state_dict())
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y, expected = fast_conv(x1), plain(x2)
    assert_same_function(y, expected, [x1, fast_conv.weight, fast_conv.bias], [x2, plain.weight, plain.bias])
    uses_fast_grad = y.grad_fn.name() == "_ConvFastWeightGradBackward"
    assert uses_fast_grad == (backend != "reference")
