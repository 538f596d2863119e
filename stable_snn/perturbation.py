"""Membrane potential perturbation dynamics and spike distances (Sec. 3).

Shapes are time-major: ``[T, B, *]``.

* :func:`mppd`        Eq. 11  eps[t] = leak[t] * eps[t-1] + dI[t],  eps[0] = 0
* :func:`ms_mppd`     Eq. 14  mean square of eps (``"mean"``, the authors' code and the
  default, so rho = 1 means what it meant in the experiments) or the per-sample
  sum over neurons and time averaged over the batch (``"sum"``, the paper's text).
* :func:`mppd_tv_l1`  the l1 counterpart of Eq. 14 (MPPD-TV-l1, Lai et al., ICLR 2026):
  mean of |eps| over neurons, time and batch (``"mean"``), or the per-sample sum of
  |eps| over neurons and time averaged over the batch (``"sum"``).
* :func:`tasad`       Eq. 12  || (sum_t s[t] - sum_t s~[t]) / T ||_2  per sample, batch mean
* :func:`std`         Eq. 13  sqrt(sum_t ||s[t] - s~[t]||_2^2)       per sample, batch mean

The L2 gains of Eq. 11 (Theorem 3.1 and its correction) are in :mod:`stable_snn.gains`.
"""
from __future__ import annotations

import torch

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


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """The mean over everything (``"mean"``), or the sum over time and neurons averaged over the batch
    (``"sum"``), of per-element values ``[T, B, *]``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return values.mean() if reduction == "mean" else values.sum() / values.shape[1]


def ms_mppd(eps: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 14: mean square of the MPPD ``eps`` (``[T, B, *]``)."""
    return _reduce(eps.float().pow(2), reduction)


def mppd_tv_l1(eps: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """MPPD-TV-l1: the l1 norm of the MPPD ``eps`` (``[T, B, *]``), reduced as :func:`ms_mppd` reduces its square."""
    return _reduce(eps.float().abs(), reduction)


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
