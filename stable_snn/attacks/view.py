"""The attacker's view of a model: its surrogate gradient swapped for the duration of an attack.

A surrogate the model's fused backend implements (the triangle of any width) is swapped in place;
any other (arctan, a per-neuron sharpness) needs the per-step module math, so the model runs on
backend ``"reference"`` for the block. The forward function is the same on every backend; the
backend and the surrogates are restored in ``finally``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

from torch import nn

from ..neurons import Surrogate, attacker_surrogate
from ..neurons.scope import FUSED_BACKENDS


@contextmanager
def attacker_view(model: nn.Module, surrogate: Surrogate | Mapping[str, Surrogate]):
    """Attack ``model`` through ``surrogate`` (one for every spiking layer, or ``{layer name: surrogate}``)."""
    chosen = list(surrogate.values()) if isinstance(surrogate, Mapping) else [surrogate]
    backend = getattr(model, "backend", None)
    switch = backend in FUSED_BACKENDS and not all(getattr(s, "fused", False) for s in chosen)
    try:
        if switch:
            model.backend = "reference"
        with attacker_surrogate(model, surrogate):
            yield model
    finally:
        if switch:
            model.backend = backend
