"""Eq. 1 (LIF) and the two DLIF forms against a direct per-neuron, per-step transcription."""
from __future__ import annotations

import pytest
import torch

from stable_snn.neurons import DLIF, LIF, build_neuron, lif_multistep_reference
from stable_snn.neurons.fused import fused_lif

LAM, THETA = 0.99, 1.0


def eq1_slow(current: list[list[float]], lam: float, theta: float, gain=None, form: str = "leak"):
    """Eq. 1 with plain Python floats: loops over neurons i and steps t, u[0] = 0, H(0) = 1.

    DLIF: "leak" form v = lam a[t] u[t-1] + I[t]; "input" form v = lam u[t-1] + a[t] I[t].
    Returns (spikes, v) as nested lists [T][N].
    """
    T, N = len(current), len(current[0])
    spikes = [[0.0] * N for _ in range(T)]
    pots = [[0.0] * N for _ in range(T)]
    for i in range(N):
        u = 0.0
        for t in range(T):
            if gain is None:
                v = lam * u + current[t][i]
            elif form == "leak":
                v = lam * gain[t] * u + current[t][i]
            else:
                v = lam * u + gain[t] * current[t][i]
            s = 1.0 if v - theta >= 0 else 0.0
            u = v * (1.0 - s)
            spikes[t][i], pots[t][i] = s, v
    return spikes, pots


def random_current(T: int, N: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.6 * torch.randn(T, N, generator=g, dtype=torch.float64)


def random_gain(T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 + torch.rand(T, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("form", [None, "leak", "input"])
def test_eq1_matches_slow_transcription(form):
    T, N = 12, 7
    current = random_current(T, N, seed=1)
    gain = None if form is None else random_gain(T, seed=2)
    spikes, v = lif_multistep_reference(current, LAM, THETA, 1.0, gain, form or "leak")
    exp_s, exp_v = eq1_slow(current.tolist(), LAM, THETA, None if gain is None else gain.tolist(), form or "leak")
    assert spikes.shape == v.shape == (T, N)
    assert torch.equal(spikes, torch.tensor(exp_s, dtype=spikes.dtype))
    torch.testing.assert_close(v, torch.tensor(exp_v, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert spikes.sum() > 0 and (spikes == 0).any()  # the input exercises both firing and silence


@pytest.mark.parametrize("impl", ["module", "fused"])
@pytest.mark.parametrize("neuron", ["lif", "dlif-leak", "dlif-input"])
def test_module_and_fused_kernel_match_slow_transcription(impl, neuron):
    """The module (per-step math) and the fused kernel without BatchNorm, on the module's parameters."""
    T, B, C = 6, 2, 3
    name, _, form = neuron.partition("-")
    kwargs = {"gain_form": form} if form else {}
    layer = build_neuron(name, T, leak=0.9, threshold=0.8, **kwargs)
    if layer.gains() is not None:
        with torch.no_grad():
            layer.gain.copy_(random_gain(T, seed=3).float())
    current = random_current(T, B * C, seed=4).float()
    out = layer(current.view(T, B, C)) if impl == "module" else fused_lif(current.view(T, B, C), layer, T)
    gain = None if layer.gains() is None else layer.gains().tolist()
    exp_s, _ = eq1_slow(current.tolist(), 0.9, 0.8, gain, form or "leak")
    assert out.shape == (T, B, C)
    assert torch.equal(out.reshape(T, B * C), torch.tensor(exp_s))


def test_constant_input_first_spike_time():
    """Constant 0.3 theta: v[t] = 0.3 (1 - lam^t)/(1 - lam) first crosses 1 at t = 4 (1-based)."""
    s, v = lif_multistep_reference(torch.full((6, 1), 0.3, dtype=torch.float64), LAM, THETA, 1.0)
    assert s[:, 0].tolist() == [0, 0, 0, 1, 0, 0]
    assert v[3, 0].item() == pytest.approx(0.3 * (1 - LAM**4) / (1 - LAM))
    assert v[4, 0].item() == pytest.approx(0.3)  # hard reset to 0, then integrate again


@pytest.mark.parametrize("form", ["leak", "input"])
def test_lif_equals_dlif_with_unit_gain(form):
    T = 5
    lif = LIF(T)
    dlif = DLIF(T, gain_form=form)
    assert torch.equal(dlif.gain.detach(), torch.ones(T))  # initialised to 1
    x = random_current(T, 24, seed=5).float().view(T, 2, 3, 4)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    s1, s2 = lif(x1), dlif(x2)
    assert torch.equal(s1, s2)
    w = torch.randn(s1.shape, generator=torch.Generator().manual_seed(0))
    (s1 * w).sum().backward()
    (s2 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)  # fp32 rounding of lam * a


@pytest.mark.parametrize("neuron", ["lif", "dlif"])
@pytest.mark.parametrize("shape", [(3, 2, 4), (4,), (5, 2)])
def test_wrong_shape_raises(neuron, shape):
    layer = build_neuron(neuron, 4)
    with pytest.raises(ValueError, match=r"\[T=4, B, \*\]"):
        layer(torch.zeros(shape))


@pytest.mark.parametrize("neuron", ["lif", "dlif"])
def test_no_state_between_calls(neuron):
    layer = build_neuron(neuron, 4)
    x = random_current(4, 8, seed=7).float()
    first = layer(x)
    layer(torch.full_like(x, 5.0))  # a very different batch in between
    assert torch.equal(layer(x), first)


def test_gain_shape_and_form_validated():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="gain"):
        lif_multistep_reference(x, LAM, THETA, 1.0, torch.ones(4))
    with pytest.raises(ValueError, match="gain_form"):
        lif_multistep_reference(x, LAM, THETA, 1.0, torch.ones(3), gain_form="output")
    with pytest.raises(ValueError, match="gain_form"):
        DLIF(3, gain_form="output")
    with pytest.raises(ValueError, match="neuron"):
        build_neuron("izhikevich", 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_module_low_precision_keeps_fp32_state(dtype):
    """In bf16/fp16 the module integrates in fp32: the spikes of the fp32 integration of the same input."""
    layer = build_neuron("dlif", 8)
    x = random_current(8, 4096, seed=8).float().to(dtype)
    s_low = layer(x)
    s_ref, _ = lif_multistep_reference(x.float(), LAM, THETA, 1.0, layer.gain)
    s_low_state, _ = lif_multistep_reference(x, LAM, THETA, 1.0, layer.gain.detach().to(dtype))
    assert s_low.dtype == dtype
    assert torch.equal(s_low.float(), s_ref)
    assert not torch.equal(s_low_state.float(), s_ref)  # the input is one where a low-precision state differs
