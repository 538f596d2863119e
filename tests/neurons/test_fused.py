"""The fused BatchNorm-LIF/DLIF(-pooling) Function against BatchNorm2d + the per-step neuron + AvgPool2d.

fp64, eager kernels: spikes identical, every gradient (input, BatchNorm affine, DLIF gain)
and the BatchNorm running statistics equal to round-off.  The compiled kernels are checked
once against the eager ones (slow: compilation).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stable_snn.neurons import DLIF, LIF, Arctan, lif_multistep_reference
from stable_snn.neurons.fused import fused_lif

T, B, C, H, W = 4, 3, 5, 4, 6


def make(form, bn_mode, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    neuron = LIF(T, threshold=0.8) if form is None else DLIF(T, gain_form=form, threshold=0.8)
    if form is not None:
        with torch.no_grad():
            neuron.gain.copy_(0.7 + 0.6 * torch.rand(T, generator=g))
    neuron = neuron.to(dtype)
    bn = None
    if bn_mode is not None:
        bn = nn.BatchNorm2d(C).to(dtype)
        with torch.no_grad():
            bn.weight.copy_(0.5 + torch.rand(C, generator=g))
            bn.bias.copy_(-0.2 + 0.8 * torch.rand(C, generator=g))
            bn.running_mean.copy_(-0.3 + 0.6 * torch.rand(C, generator=g))
            bn.running_var.copy_(0.5 + 1.5 * torch.rand(C, generator=g))
        bn.train(bn_mode == "train")
    return neuron, bn, g


def reference(x5, neuron, bn, pool):
    """BatchNorm2d on [T*B, C, H, W], the per-step neuron, AvgPool2d(2): ``([T, B, C, H', W'], un-pooled spikes)``."""
    xr = x5.expand(T, *x5.shape[1:]).reshape(T * B, C, H, W)
    current = (bn(xr) if bn is not None else xr).reshape(T, B, C, H, W)
    s, _ = lif_multistep_reference(current, neuron.leak, neuron.threshold, neuron.surrogate,
                                   neuron.gains(), neuron.gain_form)
    return (F.avg_pool2d(s.flatten(0, 1), 2).unflatten(0, (T, B)) if pool else s), s


def fused(x5, neuron, bn, pool, kernels="eager", keep_full=False):
    """The same through fused_lif on the channels-last view ``[Tx, B, H, W, C]``."""
    x = x5.permute(0, 1, 3, 4, 2)
    if not pool:
        x = x.reshape(x.shape[0], -1, C)
    out = fused_lif(x, neuron, T, bn, pool, kernels, keep_full=keep_full)
    out, full = out if keep_full else (out, None)
    h, w = (H // 2, W // 2) if pool else (H, W)
    out = out.reshape(T, B, h, w, C).permute(0, 1, 4, 2, 3)
    return (out, full.permute(0, 1, 4, 2, 3)) if keep_full else out


def params(x, neuron, bn):
    return [x] + ([neuron.gain] if neuron.gains() is not None else []) + ([bn.weight, bn.bias] if bn is not None else [])


@pytest.mark.parametrize("form", [None, "leak", "input"])
@pytest.mark.parametrize("bn_mode", [None, "eval", "train"])
@pytest.mark.parametrize("static", [False, True], ids=["per-step", "static"])
@pytest.mark.parametrize("pool", [False, True], ids=["no-pool", "pool"])
def test_fused_matches_modules(form, bn_mode, static, pool):
    neuron, bn, g = make(form, bn_mode)
    x = (0.5 + 1.5 * torch.randn(1 if static else T, B, C, H, W, generator=g, dtype=torch.float64)).requires_grad_(True)
    bn_ref = copy.deepcopy(bn)
    expected, _ = reference(x, neuron, bn_ref, pool)
    out = fused(x, neuron, bn, pool)
    assert out.dtype == x.dtype
    assert torch.equal(out, expected)
    assert 0 < expected.mean() < 1  # both firing and silence
    weight = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * weight).sum(), params(x, neuron, bn))
    expected_grads = torch.autograd.grad((expected * weight).sum(), params(x, neuron, bn_ref))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if bn is not None:
        for a, b in zip(bn.buffers(), bn_ref.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_running_stats_count_static_copies_with_cumulative_momentum():
    neuron, bn, g = make(None, "train")
    bn.momentum = None
    bn.reset_running_stats()
    bn_ref = copy.deepcopy(bn)
    x = torch.randn(1, B, C, H, W, generator=g, dtype=torch.float64)
    fused(x, neuron, bn, False)
    reference(x, neuron, bn_ref, False)
    for a, b in zip(bn.buffers(), bn_ref.buffers()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_keeps_fp32_state(dtype):
    neuron, bn, g = make("leak", "train", dtype=torch.float32)
    x = torch.randn(T, B, C, H, W, generator=g).to(dtype).requires_grad_(True)
    out = fused(x, neuron, bn, True)
    assert out.dtype == dtype
    expected = fused(x.detach().float(), neuron, copy.deepcopy(bn), True)
    assert torch.equal(out.float(), expected)
    (grad,) = torch.autograd.grad(out.float().sum(), x)
    assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_shape_errors():
    neuron, bn, _ = make(None, "train", dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\[T=4 or 1"):
        fused_lif(torch.zeros(3, 2, C), neuron, T, bn)
    with pytest.raises(ValueError, match="even H, W"):
        fused_lif(torch.zeros(T, B, 3, 4, C), neuron, T, bn, pool=True)
    with pytest.raises(ValueError, match="kernels"):
        fused_lif(torch.zeros(T, B, C), neuron, T, None, False, "triton")


@pytest.mark.parametrize("form", [None, "leak"])
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_pooled_and_full_spikes_together(form, bn_mode):
    """``keep_full``: the pooled spikes and the un-pooled ones, gradients flowing through both."""
    neuron, bn, g = make(form, bn_mode)
    x = (0.5 + 1.5 * torch.randn(T, B, C, H, W, generator=g, dtype=torch.float64)).requires_grad_(True)
    bn_ref = copy.deepcopy(bn)
    pooled, full = fused(x, neuron, bn, True, keep_full=True)
    exp_pooled, exp_full = reference(x, neuron, bn_ref, True)
    assert torch.equal(pooled, exp_pooled) and torch.equal(full, exp_full)
    w1 = torch.randn(pooled.shape, generator=g, dtype=torch.float64)
    w2 = torch.randn(full.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((pooled * w1).sum() + (full * w2).sum(), params(x, neuron, bn), retain_graph=True)
    want = torch.autograd.grad((exp_pooled * w1).sum() + (exp_full * w2).sum(), params(x, neuron, bn_ref),
                               retain_graph=True)
    for got, exp in zip(grads, want):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)
    (only_full,) = torch.autograd.grad((full * w2).sum(), x)  # the pooled output unused
    (exp_only_full,) = torch.autograd.grad((exp_full * w2).sum(), x)
    torch.testing.assert_close(only_full, exp_only_full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("static", [False, True], ids=["per-step", "static"])
@pytest.mark.parametrize("layout", ["pool", "pool-keep-full", "flat"])
def test_groups_are_separate_calls_in_one(static, layout):
    """``groups=2`` on two stacked batches: the spikes, gradients and running statistics of two calls."""
    pool, keep_full = layout != "flat", layout == "pool-keep-full"
    neuron, bn, g = make("leak", "train")
    halves = [0.5 + 1.5 * torch.randn(1 if static else T, B, H, W, C, generator=g, dtype=torch.float64) for _ in "ab"]
    halves[1] = 2.0 * halves[1] - 0.5  # other statistics than the first half
    both = torch.cat(halves, dim=1).requires_grad_(True)
    parts = [h.clone().requires_grad_(True) for h in halves]
    bn_two = copy.deepcopy(bn)

    def call(x, norm, groups=1):
        x = x if pool else x.flatten(1, 3)  # [Tx, B, H, W, C] or [Tx, B*H*W, C]
        out = fused_lif(x, neuron, T, norm, pool, keep_full=keep_full, groups=groups)
        return out if keep_full else (out,)

    out = call(both, bn, 2)
    two = [call(p, bn_two) for p in parts]  # in order: the running statistics see the first half first
    for got, *want in zip(out, *two):
        assert torch.equal(got, torch.cat(want, dim=1))
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), [both, neuron.gain, bn.weight, bn.bias])
    loss_two = sum((torch.cat([t[k] for t in two], dim=1) * w).sum() for k, w in enumerate(weights))
    want = torch.autograd.grad(loss_two, [*parts, neuron.gain, bn_two.weight, bn_two.bias])
    torch.testing.assert_close(grads[0], torch.cat(want[:2], dim=1), rtol=1e-10, atol=1e-12)
    for got, exp in zip(grads[1:], want[2:]):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)
    for a, b in zip(bn.buffers(), bn_two.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert int(bn.num_batches_tracked) == 2


def test_groups_must_divide_the_batch():
    neuron, bn, _ = make(None, "train", dtype=torch.float32)
    with pytest.raises(ValueError, match="groups=2 must be >= 1 and divide the batch"):
        fused_lif(torch.zeros(T, 3, C), neuron, T, bn, groups=2)


def test_other_surrogates_are_refused_naming_the_reference_backend():
    neuron, bn, _ = make(None, "eval", dtype=torch.float32)
    neuron.surrogate = Arctan(2.0)
    with pytest.raises(ValueError, match="backend='reference'"):
        fused_lif(torch.zeros(T, B, C), neuron, T, bn)


@pytest.mark.slow
@pytest.mark.compiles
@pytest.mark.timeout(180)
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_compiled_kernels_match_eager(bn_mode):
    """torch.compile'd kernels: same spikes, gradients to fp32 round-off (compiles, so slow)."""
    neuron, bn, g = make("leak", bn_mode, dtype=torch.float32)
    x = (0.5 + 1.5 * torch.randn(T, B, C, H, W, generator=g)).requires_grad_(True)
    bn_eager = copy.deepcopy(bn)
    out = fused(x, neuron, bn, True, "compiled")
    expected = fused(x, neuron, bn_eager, True, "eager")
    assert torch.equal(out, expected)
    weight = torch.randn(expected.shape, generator=g)
    grads = torch.autograd.grad((out * weight).sum(), params(x, neuron, bn))
    expected_grads = torch.autograd.grad((expected * weight).sum(), params(x, neuron, bn_eager))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
