"""Surrogate gradients of the Heaviside spike function, as small validated objects.

The forward pass of a spike is always ``s = H(v - theta)`` (H(0) = 1); a surrogate changes
only its backward pass, ``ds/dv``.  With ``d = v - theta``:

* :class:`Triangle` (Eq. 18, the training default):  ds/dv = (1 / w^2) max(w - |d|, 0)
* :class:`Arctan`:                                     ds/dv = alpha / (2 (1 + (pi/2 alpha d)^2))

``Arctan``'s sharpness ``alpha`` is a float or a tensor (an attacker's per-neuron, per-step
sharpness) that broadcasts to the layer's ``[T, B, *]`` potentials with time first, e.g.
``[T, 1, *]``; step ``t`` uses ``alpha[t]``.

The surrogate is used whenever a gradient is requested, in ``train()`` and ``eval()``
mode alike, so white-box attacks on an evaluated model get the same input gradients as
training does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """H(x) with H(0) = 1, in the dtype of ``x``."""
    return (x >= 0).to(x.dtype)


def triangle_grad(v: torch.Tensor, threshold: float, width: float) -> torch.Tensor:
    """ds/dv of Eq. 18: ``(1/w^2) * max(w - |v - theta|, 0)``."""
    return (width - (v - threshold).abs()).clamp_min(0) / (width * width)


def arctan_grad(v: torch.Tensor, threshold: float, alpha) -> torch.Tensor:
    """ds/dv of the arctan surrogate: ``alpha / (2 (1 + (pi/2 alpha (v - theta))^2))``."""
    return alpha / (2.0 * (1.0 + (math.pi / 2.0 * alpha * (v - threshold)) ** 2))


class Surrogate:
    """Base of the surrogates: ``derivative(v, threshold, step)`` is ds/dv at time step ``step``."""

    fused: bool = False  # whether the fused kernels (backends "eager"/"compiled") implement it

    def derivative(self, v: torch.Tensor, threshold: float, step: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def check(self, potentials: torch.Tensor) -> None:
        """Raise ``ValueError`` when the surrogate cannot serve a layer of potentials ``[T, B, *]``."""


@dataclass(frozen=True)
class Triangle(Surrogate):
    """The triangle surrogate of Eq. 18 with half-width ``width`` (omega)."""

    width: float = 1.0
    fused = True

    def __post_init__(self) -> None:
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"triangle surrogate width must be a finite float > 0, got {self.width!r}")
        object.__setattr__(self, "width", float(self.width))

    def derivative(self, v: torch.Tensor, threshold: float, step: int) -> torch.Tensor:
        return triangle_grad(v, threshold, self.width)


@dataclass(frozen=True, eq=False)
class Arctan(Surrogate):
    """The arctan surrogate with sharpness ``alpha`` (a float, or a tensor ``[T, *]``, see the module doc)."""

    alpha: float | torch.Tensor = 2.0

    def __post_init__(self) -> None:
        a = self.alpha
        if isinstance(a, torch.Tensor):
            if not a.is_floating_point() or not bool(torch.isfinite(a).all()) or not bool((a > 0).all()):
                raise ValueError("arctan surrogate alpha must be a floating tensor of finite values > 0")
            object.__setattr__(self, "alpha", a.detach())
        elif not (isinstance(a, (int, float)) and math.isfinite(a) and a > 0):
            raise ValueError(f"arctan surrogate alpha must be a finite float > 0 or a tensor, got {a!r}")
        else:
            object.__setattr__(self, "alpha", float(a))

    def check(self, potentials: torch.Tensor) -> None:
        a = self.alpha
        if not isinstance(a, torch.Tensor) or a.dim() == 0:
            return
        shape = tuple(potentials.shape)
        try:
            ok = a.dim() == len(shape) and torch.broadcast_shapes(a.shape, shape) == shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"arctan alpha of shape {tuple(a.shape)} must broadcast to the layer's [T, B, *] = {shape} "
                "with time first (e.g. [T, 1, *])"
            )

    def derivative(self, v: torch.Tensor, threshold: float, step: int) -> torch.Tensor:
        a = self.alpha
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            a = a[step if a.shape[0] > 1 else 0].to(v)
        return arctan_grad(v, threshold, a)

    def __repr__(self) -> str:
        a = self.alpha
        return f"Arctan(alpha={a if not isinstance(a, torch.Tensor) else f'tensor{tuple(a.shape)}'})"


def as_surrogate(value: Surrogate | float) -> Surrogate:
    """A :class:`Surrogate` as it is, a number as the triangle of that width (Eq. 18)."""
    if isinstance(value, Surrogate):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"surrogate must be a Surrogate (Triangle, Arctan) or a triangle width, got {value!r}")
    return Triangle(float(value))


class SurrogateSpike(torch.autograd.Function):
    """Single-step spike ``H(v - theta)`` whose backward is the surrogate's ``ds/dv`` at ``step``."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, threshold: float, surrogate: Surrogate, step: int) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.threshold, ctx.surrogate, ctx.step = threshold, surrogate, step
        return heaviside(v - threshold)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (v,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.derivative(v, ctx.threshold, ctx.step), None, None, None


def spike(v: torch.Tensor, threshold: float = 1.0, surrogate: Surrogate | float = 1.0, step: int = 0) -> torch.Tensor:
    """Spike of a membrane potential ``[B, *]`` at time step ``step`` with a surrogate gradient.

    ``surrogate``: a :class:`Surrogate`, or a number: the triangle of Eq. 18 of that width.
    """
    return SurrogateSpike.apply(v, threshold, as_surrogate(surrogate), step)
