"""Every registered model on every backend: one function, hooks on every block, internals, validation.

The ``"reference"`` backend (per-step module math) is the yardstick: the fused backends
give the same logits, internals and gradients (inputs, weights, BatchNorm, DLIF gains) to
fp32 round-off.  Which path ran is read from the autograd graph (the fused Function's
backward nodes), never from a flag.  The ``"compiled"`` cases are few and tiny
(compilation costs seconds).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stable_snn.models import BACKENDS, Block, FastConv2d, HasBackend, build_model, list_models
from stable_snn.neurons import Arctan, attacker_surrogate

T, B, CLASSES = 2, 2, 10
TOL = dict(rtol=1e-4, atol=1e-5)
FUSED_NODE = "FusedLIFBackward"

# (backend, neuron, mode): every backend, all neuron forms on "eager", "compiled" kept tiny
CASES = ([("reference", "dlif-leak", "train"), ("compiled", "dlif-leak", "train")]
         + [("eager", n, "train") for n in ("lif", "dlif-leak", "dlif-input")] + [("eager", "dlif-leak", "eval")])


def tiny(name: str, backend: str, neuron: str = "dlif-leak", **kwargs) -> nn.Module:
    """A tiny model on ``backend`` whose DLIF gains are moved off 1 (so they matter)."""
    kind, _, form = neuron.partition("-")
    if form:
        kwargs["gain_form"] = form
    torch.manual_seed(0)  # weight init only
    model = build_model(name, CLASSES, T, kind, backend=backend, width=0.125, classifier_width=32, **kwargs)
    with torch.no_grad():
        for m in model.spiking_layers():
            if m.gains() is not None:
                m.gain.uniform_(0.7, 1.3, generator=torch.Generator().manual_seed(2))
    return model


def images(seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def graph_count(t: torch.Tensor, node_name: str) -> int:
    """How many autograd nodes named ``node_name`` the graph of ``t`` holds (how many fused calls ran)."""
    seen, stack, count = set(), [t.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += node.name() == node_name
        stack.extend(f for f, _ in node.next_functions)
    return count


def run(model: nn.Module, record: bool = True):
    """Features, logits and the gradients of a loss through logits and the last current."""
    x = images().requires_grad_(True)
    features = model.forward_features(x, record_spikes=record)
    logits = model.forward_head(features)
    loss = F.cross_entropy(logits.mean(0), torch.tensor([3, 5])) + 1e-3 * features.last_current.pow(2).mean()
    names = [n for n, p in model.named_parameters()]
    grads = torch.autograd.grad(loss, [x] + list(model.parameters()), allow_unused=True)
    return features, logits, dict(zip(["x"] + names, grads))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("backend,neuron,mode", CASES)
def test_backend_computes_the_reference_function(name, backend, neuron, mode):
    """Logits, last current, spikes, gradients and BatchNorm buffers equal the reference backend's."""
    reference = tiny(name, "reference", neuron).train(mode == "train")
    model = copy.deepcopy(reference)
    model.backend = backend
    f_ref, logits_ref, g_ref = run(reference)
    f, logits, g = run(model)
    torch.testing.assert_close(logits, logits_ref, **TOL)
    torch.testing.assert_close(f.pre_logits, f_ref.pre_logits, **TOL)
    torch.testing.assert_close(f.last_current, f_ref.last_current, **TOL)
    assert len(f.spikes) == len(f_ref.spikes) == len(model.spiking_layers())
    for a, b in zip(f.spikes, f_ref.spikes):
        assert a.shape == b.shape
        assert (a != b).float().mean() < 1e-3  # a rare threshold tie may flip under reordered sums
    assert g.keys() == g_ref.keys()
    assert any(k.endswith("gain") for k in g) == neuron.startswith("dlif")
    for k in g:
        if g_ref[k] is None:
            assert g[k] is None or not g[k].any(), k
            continue
        torch.testing.assert_close(g[k], g_ref[k], **TOL, msg=lambda m, k=k: f"gradient of {k}: {m}")
    assert g["x"].abs().sum() > 0 or mode == "eval"  # fresh eval-mode statistics may silence the network
    for (k, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a.float(), b.float(), **TOL, msg=lambda m, k=k: f"{k}: {m}")
    assert graph_count(logits_ref, FUSED_NODE) == 0
    fused = graph_count(logits, FUSED_NODE)
    assert fused == (0 if backend == "reference" else len(model.spiking_layers()))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_fire_on_every_block_and_change_nothing(name, backend):
    model = tiny(name, backend).train()
    x = images()

    def logits():  # spikes recorded: the compiled kernels of the parity test serve (no new compilation)
        return model.forward_head(model.forward_features(x, record_spikes=True))

    baseline = logits()
    fused = graph_count(baseline, FUSED_NODE)
    hooked = [m for m in model.modules() if isinstance(m, (Block, FastConv2d))]
    assert any(isinstance(m, Block) for m in hooked)
    calls = {"pre": [], "post": []}
    handles = []
    for m in hooked:
        handles.append(m.register_forward_pre_hook(lambda mod, args: calls["pre"].append(mod)))
        handles.append(m.register_forward_hook(lambda mod, args, out: calls["post"].append(mod)))
    try:
        out = logits()
    finally:
        for h in handles:
            h.remove()
    assert sorted(map(id, calls["pre"])) == sorted(map(id, hooked))  # each fired once
    assert sorted(map(id, calls["post"])) == sorted(map(id, hooked))
    assert torch.equal(out, baseline)
    assert graph_count(out, FUSED_NODE) == fused  # the same path with hooks as without
    assert model.backend == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_fusion_does_not_depend_on_recording(backend):
    """Recording spikes keeps the fused pooling (the kernel returns the un-pooled spikes too)."""
    model = tiny("vgg5", backend).train()
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    assert pools
    results = {}
    for record in (False, True):
        calls = []
        handles = [p.register_forward_hook(lambda *a: calls.append(1)) for p in pools]
        try:
            features = model.forward_features(images(), record_spikes=record)
        finally:
            for h in handles:
                h.remove()
        logits = model.forward_head(features)
        results[record] = (features, logits, len(calls), graph_count(logits, FUSED_NODE))
    (f0, l0, pool_calls0, fused0), (f1, l1, pool_calls1, fused1) = results[False], results[True]
    assert torch.equal(l0, l1) and torch.equal(f0.last_current, f1.last_current)
    assert f0.spikes == () and len(f1.spikes) == len(model.spiking_layers())
    assert pool_calls0 == pool_calls1 == (len(pools) if backend == "reference" else 0)
    assert fused0 == fused1
    first = model.features[0]
    assert f1.spikes[0].shape == (T, B, first.conv.out_channels, 32, 32)  # un-pooled
    assert set(f1.spikes[0].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_identical_calls_give_identical_outputs(name, backend):
    model = tiny(name, backend)
    x = images()
    for mode in ("train", "eval") if backend != "compiled" else ("train",):  # eval: more compilation
        model.train(mode == "train")
        with torch.no_grad():
            first = model.forward_features(x, record_spikes=True)
            second = model.forward_features(x, record_spikes=True)
        assert torch.equal(model.forward_head(first), model.forward_head(second)), mode
        assert torch.equal(first.last_current, second.last_current), mode
        assert all(torch.equal(a, b) for a, b in zip(first.spikes, second.spikes)), mode


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("backend", ["reference", "eager"])  # "compiled": new specialisations, minutes of compiling
def test_bn_groups_compute_separate_passes_in_one(name, backend):
    """Two batches stacked with ``bn_groups=2``: what two train-mode passes give, running statistics included."""
    model = tiny(name, backend).train()
    twin = copy.deepcopy(model)
    x = [images(0).requires_grad_(True), (0.8 * images(1) + 0.2).requires_grad_(True)]
    both = model.forward_features(torch.cat(x), record_spikes=True, bn_groups=2)
    two = [twin.forward_features(xi, record_spikes=True) for xi in x]
    torch.testing.assert_close(model.forward_head(both), torch.cat([twin.forward_head(f) for f in two], 1), **TOL)
    torch.testing.assert_close(both.last_current, torch.cat([f.last_current for f in two], 1), **TOL)
    for i, s in enumerate(both.spikes):
        assert (s != torch.cat([f.spikes[i] for f in two], 1)).float().mean() < 1e-3
    g = torch.autograd.grad(both.last_current.pow(2).mean(), x)
    g_two = torch.autograd.grad(torch.cat([f.last_current for f in two], 1).pow(2).mean(), x)
    for a, b in zip(g, g_two):
        torch.testing.assert_close(a, b, **TOL)
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        torch.testing.assert_close(a.float(), b.float(), **TOL, msg=lambda m, k=k: f"{k}: {m}")
    with pytest.raises(ValueError, match="bn_groups=3 must be an int >= 1 dividing the batch"):
        model.forward_features(torch.cat(x), bn_groups=3)


@pytest.mark.parametrize("name", list_models())
def test_backend_is_validated_and_propagates(name):
    for backend in BACKENDS:  # chosen at construction
        built = tiny(name, backend)
        assert {m.backend for m in built.modules() if isinstance(m, HasBackend)} == {backend}
    model = tiny(name, "eager")
    holders = [m for m in model.modules() if isinstance(m, HasBackend)]
    assert len(holders) > len(model.spiking_layers())  # the model, its blocks and its convolutions
    for backend in BACKENDS:  # or set later
        model.backend = backend
        assert {m.backend for m in holders} == {backend}
    for bad in ("fused", "cuda", None):
        with pytest.raises(ValueError) as err:
            model.backend = bad
        assert all(b in str(err.value) for b in BACKENDS) and repr(bad) in str(err.value)
        assert {m.backend for m in holders} == {BACKENDS[-1]}  # unchanged
    with pytest.raises(ValueError, match="backend must be one of"):
        build_model(name, CLASSES, T, "lif", backend="triton", width=0.125, classifier_width=32)


def test_attacker_surrogate_needs_the_reference_backend_and_restores():
    """Arctan changes only the backward on "reference"; the fused backends refuse it up front."""
    model = tiny("vgg5", "eager").eval()
    with pytest.raises(ValueError, match="reference"):
        with attacker_surrogate(model, Arctan(2.0)):
            pass
    model.backend = "reference"
    x = images().requires_grad_(True)

    def input_grad():
        logits = model(x)
        return logits, torch.autograd.grad(logits.sum(), x)[0]

    logits, grad = input_grad()
    with attacker_surrogate(model, Arctan(2.0)):
        logits_a, grad_a = input_grad()
    logits_after, grad_after = input_grad()
    assert torch.equal(logits_a, logits)  # the forward pass is the same
    assert not torch.allclose(grad_a, grad)  # the backward is the attacker's
    assert torch.equal(logits_after, logits) and torch.equal(grad_after, grad)  # restored
