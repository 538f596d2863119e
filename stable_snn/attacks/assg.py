"""ASSG: the adaptive-sharpness surrogate gradient of Wang et al. (CVPR 2026, "Towards Reliable
Evaluation of Adversarial Robustness for Spiking Neural Networks", arXiv 2512.22522), for attacks.

A fixed surrogate ``ds/dv`` vanishes for neurons whose potential sits far from the threshold, so a
white-box attack through it sees no gradient there; a too-wide one points the wrong way. ASSG gives
every neuron of every spiking layer, at every time step (and for every attacked sample), its own
sharpness ``alpha``, set from running statistics of ``d = v - theta`` over the attack's iterations:

    M <- beta1 * M + (1 - beta1) * |d|            (first moment, M = 1 before the first iteration)
    D <- beta2 * D + (1 - beta2) * | |d| - M |    (spread around it, with the updated M; D = 0 first)
    alpha = a / (M + relax * D + 1e-4)

and the backward pass uses the arctan surrogate of that sharpness, ``alpha / (2 (1 + (pi/2 alpha d)^2))``
(``shape="triangle"``: the triangle of half-width ``1 / alpha``, Eq. 18 with omega = 1/alpha).
``a = 2 tan(pi * bound) / pi`` for arctan: a neuron at the typical distance ``|d| = M`` (D = 0) sits
where the arctan's primitive ``arctan(pi/2 alpha d) / pi + 1/2`` is ``1/2 +- bound``, so ``bound``
(0.425) caps how far into the flat tails (how "vanished") the typical neuron's gradient is; for
the triangle ``a = bound`` directly (``alpha |d| <= a < 1`` keeps the typical neuron inside).

Choices where the description leaves room (defaults from the authors' public implementation):
``bound`` 0.425, ``relax`` 1.5, ``beta1 = beta2 = 0.9``; statistics per sample as well as per
neuron and step (the attacked batch is fixed during a run); the forward spike is unchanged. The
statistics are updated when the backward pass reads the surrogate, i.e. once per attack
iteration (each iteration is one forward and one backward pass), never by a plain forward pass;
each attack run starts from fresh statistics. Only the backward of the spike function changes,
on backend "reference", and :func:`adaptive_sharpness` restores the model afterwards.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..neurons import Surrogate, arctan_grad, spiking_layers, triangle_grad
from .view import attacker_view

SHAPES = ("arctan", "triangle")


@dataclass(frozen=True)
class ASSG:
    """Hyper-parameters of the adaptive-sharpness surrogate (see the module docstring)."""

    shape: str = "arctan"
    bound: float = 0.425
    relax: float = 1.5
    beta1: float = 0.9
    beta2: float = 0.9

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"ASSG shape={self.shape!r} is invalid: allowed one of {', '.join(SHAPES)}")
        if not 0.0 < self.bound < (0.5 if self.shape == "arctan" else 1.0):
            raise ValueError(f"ASSG bound={self.bound!r} is invalid: allowed (0, {0.5 if self.shape == 'arctan' else 1})")
        if self.relax < 0:
            raise ValueError(f"ASSG relax={self.relax!r} is invalid: allowed >= 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ASSG {name}={getattr(self, name)!r} is invalid: allowed [0, 1)")

    @property
    def scale(self) -> float:
        """``a`` of ``alpha = a / (M + relax D)``."""
        return 2.0 * math.tan(math.pi * self.bound) / math.pi if self.shape == "arctan" else self.bound


class AdaptiveSharpness(Surrogate):
    """The ASSG surrogate of one spiking layer: running statistics per time step, ``[B, *]`` each."""

    fused = False

    def __init__(self, config: ASSG, timesteps: int) -> None:
        self.config = config
        self.first: list[torch.Tensor | float] = [1.0] * timesteps
        self.spread: list[torch.Tensor | float] = [0.0] * timesteps

    def sharpness(self, step: int) -> torch.Tensor | float:
        """``alpha`` of time step ``step`` from the statistics so far."""
        c = self.config
        return c.scale / (self.first[step] + c.relax * self.spread[step] + 1e-4)

    @torch.no_grad()
    def observe(self, distance: torch.Tensor, step: int) -> None:
        """Fold ``|v - theta|`` ``[B, *]`` of one iteration into the statistics of ``step``."""
        c, d = self.config, distance.detach().abs().float()
        prev = self.first[step]
        if isinstance(prev, torch.Tensor) and prev.shape != d.shape:
            raise ValueError(f"ASSG statistics of shape {tuple(prev.shape)} met potentials of shape {tuple(d.shape)}: "
                             "one ASSG surrogate serves one attacked batch")
        self.first[step] = c.beta1 * prev + (1 - c.beta1) * d
        self.spread[step] = c.beta2 * self.spread[step] + (1 - c.beta2) * (d - self.first[step]).abs()

    def derivative(self, v: torch.Tensor, threshold: float, step: int) -> torch.Tensor:
        self.observe(v - threshold, step)
        alpha = self.sharpness(step)
        if self.config.shape == "arctan":
            return arctan_grad(v, threshold, alpha.to(v))
        return triangle_grad(v, threshold, (1.0 / alpha).to(v))

    def __repr__(self) -> str:
        return f"AdaptiveSharpness({self.config})"


@contextmanager
def adaptive_sharpness(model: nn.Module, config: ASSG):
    """Give every spiking layer of ``model`` a fresh ASSG surrogate for the block; restore the model after."""
    surrogates = {name: AdaptiveSharpness(config, layer.timesteps) for name, layer in spiking_layers(model)}
    with attacker_view(model, surrogates):
        yield surrogates
