"""Membrane potential perturbation dynamics and spike distances (Sec. 3).

Shapes are time-major: ``[T, B, *]``.

* :func:`mppd`     Eq. 11  eps[t] = leak[t] * eps[t-1] + dI[t],  eps[0] = 0
* :func:`ms_mppd`  Eq. 14  mean square of eps (``"mean"``, the authors' code and the
  default, so rho = 1 means what it meant in the experiments) or the per-sample
  sum over neurons and time averaged over the batch (``"sum"``, the paper's text).
* :func:`tasad`    Eq. 12  || (sum_t s[t] - sum_t s~[t]) / T ||_2  per sample, batch mean
* :func:`std`      Eq. 13  sqrt(sum_t ||s[t] - s~[t]||_2^2)       per sample, batch mean

L2 gains (Theorem 3.1 and its correction): the map dI -> eps of Eq. 11 over T steps
is the lower-triangular matrix L_T with entries prod_{j=k+1..t} leak[j]; with
dI = W ds its exact L2 gain is sigma_max(L_T) * ||W||_2.  The paper's bound
sqrt(1/(1 - lam)) * ||W|| does not hold for long horizons (at lam = 0.99 it falls
below the exact gain from T = 30 on); Young's inequality gives ||W|| * sum_k lam^k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

REDUCTIONS = ("mean", "sum")


def _leak_vector(leak, T: int, like: torch.Tensor) -> torch.Tensor:
    leak_t = torch.as_tensor(leak, dtype=like.dtype, device=like.device)
    if leak_t.dim() == 0:
        return leak_t.expand(T)
    if leak_t.shape != (T,):
        raise ValueError(f"leak must be a scalar or have shape [T]=[{T}], got {tuple(leak_t.shape)}")
    return leak_t


def mppd(delta_current: torch.Tensor, leak) -> torch.Tensor:
    """Eq. 11: membrane potential perturbation dynamics.

    ``delta_current``: ``[T, B, *]`` = I_clean - I_perturbed (the weighted input
    difference ``W ds``).  ``leak``: scalar lambda or ``[T]`` per-step leak
    (``lam * a[t]`` for DLIF in the paper's form).  Returns eps ``[T, B, *]``.
    """
    if delta_current.dim() < 1:
        raise ValueError(f"delta_current must be [T, ...], got {tuple(delta_current.shape)}")
    T = delta_current.shape[0]
    lam = _leak_vector(leak, T, delta_current)
    eps = []
    prev = torch.zeros_like(delta_current[0])
    for t in range(T):
        prev = lam[t] * prev + delta_current[t]
        eps.append(prev)
    return torch.stack(eps)


def ms_mppd(eps: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 14: mean square of the MPPD ``eps`` (``[T, B, *]``)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    sq = eps.float().pow(2)
    if reduction == "mean":
        return sq.mean()
    return sq.sum() / eps.shape[1]


def _check_pair(s: torch.Tensor, s_pert: torch.Tensor) -> None:
    if s.shape != s_pert.shape or s.dim() < 2:
        raise ValueError(f"spike tensors must both be [T, B, *], got {tuple(s.shape)} and {tuple(s_pert.shape)}")


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    # sqrt with a finite gradient at 0 (identical spike trains are common)
    return torch.sqrt(x.pow(2).sum(-1) + 1e-12)


def tasad(spikes: torch.Tensor, spikes_pert: torch.Tensor) -> torch.Tensor:
    """Eq. 12: time-averaged spiking activity distance, averaged over the batch."""
    _check_pair(spikes, spikes_pert)
    T, B = spikes.shape[:2]
    diff = (spikes.float().sum(0) - spikes_pert.float().sum(0)) / T
    return _safe_norm(diff.reshape(B, -1)).mean()


def std(spikes: torch.Tensor, spikes_pert: torch.Tensor) -> torch.Tensor:
    """Eq. 13: spike train distance, averaged over the batch."""
    _check_pair(spikes, spikes_pert)
    B = spikes.shape[1]
    diff = (spikes.float() - spikes_pert.float()).transpose(0, 1).reshape(B, -1)
    return _safe_norm(diff).mean()


# -- L2 gains -----------------------------------------------------------------------

def leak_matrix(leak, timesteps: int) -> torch.Tensor:
    """L_T of Eq. 11: ``[T, T]`` lower-triangular, L[t, k] = prod_{j=k+1..t} leak[j]."""
    lam = _leak_vector(leak, timesteps, torch.zeros((), dtype=torch.float64)).double()
    L = torch.zeros(timesteps, timesteps, dtype=torch.float64)
    for t in range(timesteps):
        L[t, t] = 1.0
        for k in range(t - 1, -1, -1):
            L[t, k] = L[t, k + 1] * lam[k + 1]
    return L


def temporal_gain(leak, timesteps: int) -> float:
    """sigma_max(L_T): the exact L2 gain of Eq. 11 per unit ||W||."""
    return float(torch.linalg.matrix_norm(leak_matrix(leak, timesteps), ord=2))


def paper_bound_factor(leak: float) -> float:
    """Theorem 3.1's factor sqrt(1 / (1 - lam))."""
    return math.inf if leak >= 1 else math.sqrt(1.0 / (1.0 - leak))


def young_bound_factor(leak: float, timesteps: int) -> float:
    """Young's inequality factor sum_{k<T} lam^k = (1 - lam^T) / (1 - lam)."""
    return float(sum(leak**k for k in range(timesteps)))


def spectral_norm(matrix: torch.Tensor, iters: int = 200, generator: torch.Generator | None = None) -> float:
    """Largest singular value of a 2-D matrix by power iteration on ``M^T M``."""
    m = matrix.detach().double()
    if m.dim() != 2:
        raise ValueError(f"spectral_norm expects a 2-D matrix, got {tuple(m.shape)}")
    v = torch.randn(m.shape[1], dtype=torch.float64, generator=generator)
    v /= v.norm()
    sigma = 0.0
    for _ in range(iters):
        w = m.T @ (m @ v)
        n = w.norm()
        if n == 0:
            return 0.0
        v = w / n
        new = float((m @ v).norm())
        if abs(new - sigma) <= 1e-12 * max(new, 1.0):
            sigma = new
            break
        sigma = new
    return sigma


def synapse_matrix(ops: list[nn.Module]) -> torch.Tensor:
    """The weight matrix W feeding a spiking layer, with BatchNorm folded in (eval statistics).

    Conv weights are taken as ``out x (in * k * k)`` (as SNN-RAT does); a BatchNorm
    multiplies the rows by ``gamma / sqrt(var + eps)``; a BatchNorm alone is the
    diagonal matrix of that scale.
    """
    W = None
    for op in ops:
        if isinstance(op, (nn.Conv2d, nn.Linear)):
            W = op.weight.detach().double().flatten(1)
        elif isinstance(op, nn.modules.batchnorm._BatchNorm):
            scale = (op.weight.detach() if op.weight is not None else torch.ones_like(op.running_var)).double()
            scale = scale / torch.sqrt(op.running_var.double() + op.eps)
            W = torch.diag(scale) if W is None else scale[:, None] * W
        else:
            raise TypeError(f"unsupported op in a synapse: {type(op).__name__}")
    if W is None:
        raise ValueError("a synapse needs at least one weight op")
    return W


@dataclass(frozen=True)
class LayerGain:
    """L2 gain of one layer's MPPD (Theorem 3.1 and the exact value)."""

    name: str
    weight_norm: float  # ||W||_2
    exact_gain: float  # sigma_max(L_T) * ||W||_2
    paper_bound: float  # sqrt(1/(1-lam)) * ||W||_2
    young_bound: float  # ||W||_2 * sum_k lam^k
    bound_violated: bool  # paper_bound < exact_gain


def layer_gain(name: str, weight_norm: float, leak_profile, leak: float, timesteps: int) -> LayerGain:
    exact = temporal_gain(leak_profile, timesteps) * weight_norm
    paper = paper_bound_factor(leak) * weight_norm
    young = young_bound_factor(leak, timesteps) * weight_norm
    return LayerGain(name, weight_norm, exact, paper, young, paper < exact * (1 - 1e-9))


def mppd_gains(model, iters: int = 100) -> list[LayerGain]:
    """Per-layer L2 gains of the MPPD for a spiking network (see the module docstring).

    For DLIF in the paper's form the leak of step t is ``lam * a[t]``; in the "input"
    form ``a[t]`` scales the input, so it multiplies the rows of L_T's columns
    (``L diag(a)``).  The paper's bound is computed with the nominal lam.
    """
    gen = torch.Generator().manual_seed(0)
    out = []
    for syn in model.synapses():
        neuron = syn.neuron
        wn = spectral_norm(synapse_matrix(syn.ops), iters=iters, generator=gen)
        scale = neuron.input_scale()
        if scale is None:
            exact_factor = temporal_gain(neuron.leak_profile(), neuron.timesteps)
        else:
            L = leak_matrix(neuron.leak_profile(), neuron.timesteps) * scale.detach().double().cpu()[None, :]
            exact_factor = float(torch.linalg.matrix_norm(L, ord=2))
        g = layer_gain(syn.name, wn, neuron.leak_profile(), neuron.leak, neuron.timesteps)
        exact = exact_factor * wn
        out.append(LayerGain(g.name, wn, exact, g.paper_bound, g.young_bound, g.paper_bound < exact * (1 - 1e-9)))
    return out
