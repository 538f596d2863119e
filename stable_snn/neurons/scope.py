"""Scoped changes to the spiking layers of a model: an attacker's surrogate gradient.

The evaluation of a defence attacks it with surrogates other than the training one (a
triangle of another width omega, arctan with a sharpness alpha, a per-neuron per-step
sharpness tensor).  :func:`attacker_surrogate` swaps the surrogate of every spiking layer
(only the backward of the spike function changes) and restores the model in ``finally``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

from torch import nn

from .modules import LIF
from .surrogate import Surrogate, Triangle

FUSED_BACKENDS = ("eager", "compiled")


def spiking_layers(model: nn.Module) -> list[tuple[str, LIF]]:
    """All spiking layers of ``model`` in forward order, with their names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LIF)]


def _plan(model: nn.Module, surrogate: Surrogate | Mapping[str, Surrogate]) -> list[tuple[LIF, Surrogate]]:
    layers = spiking_layers(model)
    if isinstance(surrogate, Surrogate):
        plan = [(m, surrogate) for _, m in layers]
    elif isinstance(surrogate, Mapping):
        names = [n for n, _ in layers]
        unknown = sorted(set(surrogate) - set(names))
        if unknown:
            raise ValueError(f"no spiking layers named {unknown}; the spiking layers are {names}")
        plan = [(m, surrogate[n]) for n, m in layers if n in surrogate]
    else:
        raise ValueError(f"surrogate must be a Surrogate or a mapping of spiking-layer names to Surrogates, got {surrogate!r}")
    for _, s in plan:
        if not isinstance(s, Surrogate):
            raise ValueError(f"surrogate must be a Surrogate (Triangle, Arctan), got {s!r}")
        if getattr(model, "backend", None) in FUSED_BACKENDS and not s.fused:
            raise ValueError(f"backend {model.backend!r} implements the triangle surrogate only, got {s!r}: "
                             "set model.backend = 'reference' to attack with other surrogates")
    return plan


@contextmanager
def attacker_surrogate(model: nn.Module, surrogate: Surrogate | Mapping[str, Surrogate]):
    """Give spiking layers ``surrogate`` for the duration of the block, then restore them.

    ``surrogate``: one :class:`~stable_snn.neurons.surrogate.Surrogate` for every spiking layer,
    or a mapping ``{layer name: Surrogate}`` (names as in :func:`spiking_layers`; a per-neuron
    sharpness tensor differs per layer).  Only the backward pass of the spike function changes.
    """
    plan = _plan(model, surrogate)
    saved = [(m, m.surrogate) for m, _ in plan]
    try:
        for m, s in plan:
            m.surrogate = s
        yield model
    finally:
        for m, s in saved:
            m.surrogate = s


@contextmanager
def surrogate_width(model: nn.Module, width: float):
    """Temporarily give every spiking layer the triangle surrogate of width ``width`` (an attacker's omega)."""
    with attacker_surrogate(model, Triangle(width)) as m:
        yield m
