"""Every registered model with every neuron: shapes, internals, purity, gradients, errors."""
from __future__ import annotations

import pytest
import torch

from stable_snn.models import Features, build_model, list_models
from stable_snn.neurons import LIF

T, B, CLASSES = 2, 2, 10
NEURONS = ["lif", "dlif"]  # dlif in the paper's ("leak") gain form
ALL_NEURONS = ["lif", "dlif-leak", "dlif-input"]  # both DLIF gain forms where the form matters


def tiny(name: str, neuron: str, timesteps: int = T, **kwargs) -> torch.nn.Module:
    """A tiny ``name`` model (width 0.125, classifier width 32); ``neuron`` may carry the DLIF form."""
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
def test_forward_features_are_the_neurons_inputs_and_outputs(name, neuron):
    """On the reference backend the neurons run as modules: their hooks see what the features report."""
    model = tiny(name, neuron, backend="reference").eval()
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
            features = model.forward_features(x, record_spikes=True)
            logits = model.forward_head(features)
            plain = model(x)
            quiet = model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    assert isinstance(features, Features)
    assert torch.equal(logits, plain) and logits.shape == (T, B, CLASSES)
    assert features.pre_logits.shape[:2] == (T, B)
    assert len(features.spikes) == len(layers) and quiet.spikes == ()
    for s, hooked in zip(features.spikes, seen_out[: len(layers)]):
        assert s.shape[:2] == (T, B)
        assert torch.equal(s, hooked)
        assert set(s.unique().tolist()) <= {0.0, 1.0}
    assert features.last_current.shape == features.spikes[-1].shape
    assert torch.equal(features.last_current, seen_in[len(layers) - 1])
    assert torch.equal(quiet.last_current, features.last_current)


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


# -- initialisation -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_the_authors_initialisation_is_the_default(name):
    """Kaiming-normal with fan_out and the ReLU gain (std sqrt(2 / fan_out)) for every conv and Linear
    weight, zero biases, BatchNorm 1 / 0; VGG's convolutions carry a bias, WRN's none."""
    model = build_model(name, CLASSES, T, "dlif", width=0.5, classifier_width=256, generator=torch.Generator().manual_seed(0))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all((m.bias is not None) == name.startswith("vgg") for m in convs)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.weight.numel() >= 4000:
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
            w = m.weight.detach()
            assert float(w.std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.05), m
            assert abs(float(w.mean())) < 0.1 * (2 / fan_out) ** 0.5
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
            assert not m.bias.any()
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()


def test_pytorchs_initialisation_is_an_option():
    """``init="pytorch"``: PyTorch's defaults (uniform within 1/sqrt(fan_in)), bias-free VGG convolutions."""
    model = build_model("vgg5", CLASSES, T, "dlif", width=0.5, classifier_width=256, init="pytorch",
                        generator=torch.Generator().manual_seed(0))
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert m.bias is None
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            bound, largest = 1 / m.weight[0].numel() ** 0.5, float(m.weight.detach().abs().max())
            assert 0.9 * bound < largest <= bound
    with pytest.raises(ValueError, match="init must be one of"):
        build_model("vgg5", CLASSES, T, "dlif", init="xavier")


@pytest.mark.parametrize("name", list_models())
def test_a_generator_fixes_the_weights_and_leaves_the_global_rng_alone(name):
    """Two builds from one seed are identical bit for bit whatever the global generator holds, another
    seed gives other weights, and a build from a generator does not move the global generator."""
    def build(seed: int):
        return build_model(name, CLASSES, T, "dlif", width=0.125, classifier_width=32,
                           generator=torch.Generator().manual_seed(seed))

    state = torch.get_rng_state()
    a = build(7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(100)  # the global generator moves on; the next build must not care
    b, c = build(7), build(8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
