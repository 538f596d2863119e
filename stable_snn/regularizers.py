"""The SNN-RAT regulariser (Ding et al. 2022), applied after every optimiser step.

* Weight retraction towards orthogonality: W <- (1 + beta) W - beta W W^T W for every
  Conv (as ``out x in*k*k``) and Linear layer; for Linear layers with at least
  ``min_outputs`` outputs a random ``row_fraction`` of the rows each step.
* Projection of the residual convex-combination weights onto the simplex.

Row choices draw from the caller's generator; give every DDP worker a generator with
the same seed so the weights stay identical across workers.
"""
from __future__ import annotations

import torch
from torch import nn

from .models.wrn import ConvexCombination


def retract(W: torch.Tensor, beta: float) -> torch.Tensor:
    """(1 + beta) W - beta W W^T W for a 2-D ``W`` (returns a new tensor)."""
    return (1.0 + beta) * W - beta * (W @ (W.T @ W))


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of a 1-D vector onto the probability simplex."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    k = torch.arange(1, v.numel() + 1, device=v.device, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / k > 0).max())
    theta = css[rho] / (rho + 1)
    return (v - theta).clamp_min(0.0)


@torch.no_grad()
def snn_rat_step(
    model: nn.Module,
    beta: float,
    generator: torch.Generator | None = None,
    row_fraction: float = 0.3,
    min_outputs: int = 200,
) -> None:
    """Apply the SNN-RAT retraction and the simplex projection in place."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            W = m.weight.view(m.weight.shape[0], -1)
            W.copy_(retract(W.float(), beta).to(W.dtype))
        elif isinstance(m, nn.Linear):
            W = m.weight
            if W.shape[0] >= min_outputs:
                n = max(1, int(row_fraction * W.shape[0]))
                rows = torch.randperm(W.shape[0], generator=generator)[:n].to(W.device)
                W[rows] = retract(W[rows].float(), beta).to(W.dtype)
            else:
                W.copy_(retract(W.float(), beta).to(W.dtype))
        elif isinstance(m, ConvexCombination):
            m.weight.copy_(project_simplex(m.weight.float()).to(m.weight.dtype))
