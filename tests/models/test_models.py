"""Every registered model with every neuron: shapes, internals, purity, gradients, errors."""
from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext

import pytest
import torch

from stable_snn.models import SNNOutput, build_model, list_models
from stable_snn.neurons import LIF, neuron_backend

T, B, CLASSES = 2, 2, 10
NEURONS = ["lif", "dlif"]  # dlif in the paper's ("leak") gain form
ALL_NEURONS = ["lif", "dlif-leak", "dlif-input"]  # both DLIF gain forms where the form matters


def tiny(name: str, neuron: str, timesteps: int = T, **kwargs) -> torch.nn.Module:
    kind, _, form = neuron.partition("-")
    if form:
        kwargs["gain_form"] = form
    torch.manual_seed(0)  # weight init only; the library itself never seeds
    return build_model(name, CLASSES, timesteps, kind, width=0.125, classifier_width=32, **kwargs)


def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Set BatchNorm running statistics to those of ``x`` (one train-mode pass), then eval mode.

    A freshly initialised model in eval mode (running mean 0, var 1) is silent beyond its
    first layers, so its input gradient is zero for a reason that has nothing to do with
    the surrogate; an attacked model is a trained one with calibrated statistics.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass gives the batch's statistics
    with torch.no_grad():
        model.train()(x)
    return model.eval()


def images(batch: int = B, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_registry_lists_the_paper_models():
    assert {"vgg5", "vgg11", "wrn16"} <= set(list_models())


def test_unknown_model_names_allowed_values():
    with pytest.raises(ValueError) as err:
        build_model("resnet18", CLASSES, T, "lif")
    for name in list_models():
        assert name in str(err.value)
    assert "resnet18" in str(err.value)


@pytest.mark.parametrize("name", list_models())
def test_unknown_neuron_raises(name):
    with pytest.raises(ValueError, match="neuron"):
        build_model(name, CLASSES, T, "izhikevich", width=0.125, classifier_width=32)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("neuron", NEURONS)
def test_output_shape_and_determinism(name, neuron):
    model = tiny(name, neuron)
    x = images()
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with torch.no_grad():
            first, second = model(x), model(x)
        assert first.shape == (T, B, CLASSES), mode
        assert torch.isfinite(first).all(), mode
        assert torch.equal(first, second), mode


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("neuron", NEURONS)
def test_return_internals(name, neuron):
    model = tiny(name, neuron).eval()
    layers = [m for m in model.modules() if isinstance(m, LIF)]
    assert layers == model.spiking_layers() and layers
    seen_in, seen_out = [], []

    def record(_module, inputs, output):
        seen_in.append(inputs[0])
        seen_out.append(output)

    hooks = [m.register_forward_hook(record) for m in layers]
    try:
        x = images()
        with torch.no_grad():
            out = model(x, return_internals=True)
            plain = model(x)
    finally:
        for h in hooks:
            h.remove()
    assert isinstance(out, SNNOutput)
    assert torch.equal(out.logits, plain)
    assert len(out.spikes) == len(layers)
    for s, hooked in zip(out.spikes, seen_out[: len(layers)]):
        assert s.shape[:2] == (T, B)
        assert torch.equal(s, hooked)
        assert set(s.unique().tolist()) <= {0.0, 1.0}
    assert out.last_current.shape == out.spikes[-1].shape
    assert torch.equal(out.last_current, seen_in[len(layers) - 1])


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("neuron", ALL_NEURONS)
def test_input_gradient_nonzero_in_eval_mode(name, neuron):
    model = calibrate_batchnorm(tiny(name, neuron), images(4, seed=1))
    assert not any(m.training for m in model.modules())
    x = images().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x).mean(0), torch.tensor([1, 7]))
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("neuron", NEURONS)
@pytest.mark.parametrize("shape", [(3, 32, 32), (B, 1, 32, 32), (T, B, 3, 32, 32)])
def test_wrong_input_shape_raises(name, neuron, shape):
    model = tiny(name, neuron)
    with pytest.raises(ValueError, match=r"\[B, 3, (H, W|32, 32)\]"):
        model(torch.rand(shape))


@pytest.mark.parametrize("name", ["vgg5", "vgg11"])
def test_vgg_refuses_another_image_size(name):
    """The classifier's input size fixes the image size: a 16x16 image is refused up front."""
    model = tiny(name, "dlif")
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\], got \(2, 3, 16, 16\)"):
        model(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("name", list_models())
def test_backends_agree(name):
    model = tiny(name, "dlif-leak").eval()
    with torch.no_grad():
        gains = [m.gain for m in model.spiking_layers()]
        for g in gains:
            g.uniform_(0.7, 1.3, generator=torch.Generator().manual_seed(1))
    x = images()
    with torch.no_grad():
        fused = model(x)
        with neuron_backend(model, "reference"):
            reference = model(x)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("neuron", ALL_NEURONS)
def test_synapses_and_gains(name, neuron):
    model = tiny(name, neuron, timesteps=3)
    layers = model.spiking_layers()
    syn = model.synapses()
    assert [s.neuron for s in syn] == layers
    assert len({s.name for s in syn}) == len(syn)
    gains = model.dlif_gains()
    if neuron == "lif":
        assert gains is None
    else:
        assert gains.shape == (len(layers), 3)
        assert torch.equal(gains, torch.ones(len(layers), 3))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("form", ["leak", "input"])
def test_dlif_gains_get_gradients_from_task_loss(name, form):
    model = tiny(name, f"dlif-{form}", timesteps=3).train()
    loss = torch.nn.functional.cross_entropy(model(images()).mean(0), torch.tensor([0, 3]))
    loss.backward()
    grads = [m.gain.grad for m in model.spiking_layers()]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@contextmanager
def module_path(model):
    """Force the module path (a no-op hook on a submodule disables the fast path)."""
    handle = model.spiking_layers()[0].register_forward_hook(lambda *args: None)
    try:
        assert not model.uses_fast_path()
        yield model
    finally:
        handle.remove()


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("neuron,mode", [(n, "train") for n in ALL_NEURONS] + [("dlif-leak", "eval")])
def test_fast_path_equals_module_path(name, neuron, mode):
    """The default (fast) path computes the module path's function, internals and gradients."""
    fast = tiny(name, neuron, timesteps=3)
    if neuron != "lif":
        with torch.no_grad():
            for m in fast.spiking_layers():
                m.gain.uniform_(0.7, 1.3, generator=torch.Generator().manual_seed(2))
    slow = copy.deepcopy(fast)
    fast.train(mode == "train"), slow.train(mode == "train")
    assert fast.uses_fast_path()
    labels = torch.tensor([3, 5])
    results = []
    for model, ctx in ((fast, nullcontext()), (slow, module_path(slow))):
        x = images().requires_grad_(True)
        with ctx:
            out = model(x, return_internals=True)
            quiet = model(x, return_internals=True, record_spikes=False)
        loss = torch.nn.functional.cross_entropy(out.logits.mean(0), labels) + 1e-3 * out.last_current.pow(2).mean()
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, quiet, x.grad, grads, {k: v.clone() for k, v in model.state_dict().items()}))
    (out_f, quiet_f, gx_f, gp_f, state_f), (out_s, quiet_s, gx_s, gp_s, state_s) = results
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_f.logits, out_s.logits, **tol)
    torch.testing.assert_close(out_f.last_current, out_s.last_current, **tol)
    assert len(out_f.spikes) == len(out_s.spikes) == len(fast.spiking_layers())
    for a, b in zip(out_f.spikes, out_s.spikes):
        assert a.shape == b.shape
        assert (a != b).float().mean() < 1e-3  # a rare threshold tie may flip under reordered sums
    assert quiet_f.spikes == ()
    torch.testing.assert_close(quiet_f.logits, out_f.logits)
    torch.testing.assert_close(quiet_f.last_current, out_f.last_current)
    torch.testing.assert_close(gx_f, gx_s, **tol)
    assert gp_f.keys() == gp_s.keys()
    for k in gp_f:
        torch.testing.assert_close(gp_f[k], gp_s[k], **tol, msg=lambda m, k=k: f"{k}: {m}")
    for k in state_f:
        if state_f[k].is_floating_point():
            torch.testing.assert_close(state_f[k], state_s[k], **tol, msg=lambda m, k=k: f"{k}: {m}")
