"""Models by name (timm-style registry): ``build_model("vgg11", num_classes=10, ...)``."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from .backend import check_backend
from .base import CIFAR100_MEAN, CIFAR100_STD, SpikingNetwork

_REGISTRY: dict[str, Callable[..., SpikingNetwork]] = {}


def register_model(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(
    name: str,
    num_classes: int = 10,
    timesteps: int = 8,
    neuron: str = "dlif",
    backend: str = "eager",
    **kwargs,
) -> SpikingNetwork:
    """Build a spiking network by name.

    ``backend``: one of :data:`~stable_snn.models.backend.BACKENDS` (``"reference"``,
    ``"eager"``, ``"compiled"``).  kwargs flow to the model (``width``, ``classifier_width``,
    ``mean``, ``std``; ``init`` and ``generator``: the weight initialisation scheme of
    :mod:`~stable_snn.models.init` and the ``torch.Generator`` it draws from, so a build from a
    generator is a function of its seed and leaves torch's global generator as it was) and to its neurons (``leak``, ``threshold``, ``surrogate_width``,
    ``gain_form``).  Normalisation defaults to CIFAR-10's statistics, CIFAR-100's when
    ``num_classes == 100``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"model must be one of {list_models()}, got {name!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    check_backend(backend)
    if num_classes == 100:
        kwargs.setdefault("mean", CIFAR100_MEAN)
        kwargs.setdefault("std", CIFAR100_STD)
    # With a generator every weight comes from it; the modules' own default initialisation while they
    # are constructed draws from torch's global generator, whose state is put back afterwards.
    with torch.random.fork_rng(devices=[]) if kwargs.get("generator") is not None else nullcontext():
        return _REGISTRY[name](num_classes=num_classes, timesteps=timesteps, neuron=neuron, backend=backend, **kwargs)


def _register_builtin() -> None:
    from .vgg import vgg5, vgg11
    from .wrn import wrn16

    register_model("vgg5")(vgg5)
    register_model("vgg11")(vgg11)
    register_model("wrn16")(wrn16)


_register_builtin()
