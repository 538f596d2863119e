"""Spiking neurons: surrogate (Eq. 18), LIF/DLIF step math (Eq. 1), modules."""
from contextlib import contextmanager

from torch import nn

from .functional import GAIN_FORMS, MultiStepLIF, lif_multistep, lif_multistep_reference
from .modules import BACKENDS, DLIF, LIF, NEURONS, build_neuron
from .surrogate import TriangleSpike, heaviside, spike, triangle_grad


def spiking_layers(model: nn.Module) -> list[tuple[str, LIF]]:
    """All spiking layers of ``model`` in forward order, with their names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LIF)]


@contextmanager
def surrogate_width(model: nn.Module, width: float):
    """Temporarily set every neuron's surrogate width (e.g. for an attacker's omega)."""
    if width <= 0:
        raise ValueError(f"surrogate width must be > 0, got {width}")
    layers = [m for _, m in spiking_layers(model)]
    saved = [m.surrogate_width for m in layers]
    try:
        for m in layers:
            m.surrogate_width = float(width)
        yield model
    finally:
        for m, w in zip(layers, saved):
            m.surrogate_width = w


@contextmanager
def neuron_backend(model: nn.Module, backend: str):
    """Temporarily switch every neuron to ``backend`` ("fused" or "reference")."""
    layers = [m for _, m in spiking_layers(model)]
    saved = [m.backend for m in layers]
    try:
        for m in layers:
            m.backend = backend
        yield model
    finally:
        for m, b in zip(layers, saved):
            m.backend = b


__all__ = [
    "BACKENDS", "DLIF", "GAIN_FORMS", "LIF", "MultiStepLIF", "NEURONS", "TriangleSpike",
    "build_neuron", "heaviside", "lif_multistep", "lif_multistep_reference", "neuron_backend",
    "spike", "spiking_layers", "surrogate_width", "triangle_grad",
]
