"""Triangle surrogate gradient of the Heaviside spike function (Eq. 18).

    s = H(v - theta),        ds/dv := (1 / omega^2) * max(omega - |v - theta|, 0)

The surrogate is used whenever a gradient is requested, in ``train()`` and
``eval()`` mode alike, so white-box attacks on an evaluated model get the same
input gradients as training does.
"""
from __future__ import annotations

import torch


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """H(x) with H(0) = 1, in the dtype of ``x``."""
    return (x >= 0).to(x.dtype)


def triangle_grad(v: torch.Tensor, threshold: float, width: float) -> torch.Tensor:
    """ds/dv of Eq. 18: ``(1/w^2) * max(w - |v - theta|, 0)``."""
    return (width - (v - threshold).abs()).clamp_min(0) / (width * width)


class TriangleSpike(torch.autograd.Function):
    """Single-step spike ``H(v - theta)`` with the triangle surrogate (Eq. 18)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, threshold: float, width: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.threshold, ctx.width = threshold, width
        return heaviside(v - threshold)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (v,) = ctx.saved_tensors
        return grad_out * triangle_grad(v, ctx.threshold, ctx.width), None, None


def spike(v: torch.Tensor, threshold: float = 1.0, width: float = 1.0) -> torch.Tensor:
    """Spike of a membrane potential with the Eq. 18 surrogate gradient."""
    return TriangleSpike.apply(v, threshold, width)
