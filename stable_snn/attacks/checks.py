"""Checks for gradient obfuscation (the spirit of AutoAttack's ``checks.py``), as flags.

A white-box evaluation of an SNN is only trusted when the surrogate gradient is informative.
Signs that it is not:

* a black-box attack (Square) beats the white-box PGD on the same samples;
* PGD with the attacker's surrogate width changed (``surrogate_width``) beats the white-box PGD;
* robust accuracy does not fall to about 0 as eps grows to 64/255;
* input gradients that are exactly zero.

Each check reads the per-row results of a protocol run and returns a :class:`Flag`.
"Beats" means lower robust accuracy than the reference by more than a noise margin:
one binomial standard error of the reference accuracy on the compared samples,
``sqrt(p (1 - p) / n)``, and at least ``min_margin`` (half a point).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol as TypingProtocol

import torch
import torch.nn.functional as F
from torch import nn

from .base import decode, eval_mode, full_precision


class RowLike(TypingProtocol):
    indices: torch.Tensor  # LongTensor[M]: positions in the evaluated set
    correct: torch.Tensor  # BoolTensor[M]


@dataclass(frozen=True)
class Flag:
    """Outcome of one check: ``raised`` means the evaluation may be unreliable."""

    name: str
    raised: bool
    value: float
    threshold: float
    message: str


def noise_margin(n: int, p: float, *, z: float = 1.0, min_margin: float = 0.005) -> float:
    """``max(min_margin, z * sqrt(p (1 - p) / n))``: the accuracy difference treated as noise."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return max(min_margin, z * math.sqrt(max(p * (1 - p), 0.0) / n))


def _accuracy_on(row: RowLike, positions: torch.Tensor) -> float:
    """Accuracy of ``row`` restricted to ``positions`` (which it must cover)."""
    order = torch.argsort(row.indices)
    where = torch.searchsorted(row.indices[order], positions)
    return row.correct[order][where].float().mean().item()


def _shared(a: RowLike, b: RowLike) -> torch.Tensor:
    common = set(a.indices.tolist()) & set(b.indices.tolist())
    return torch.tensor(sorted(common), dtype=torch.long)


@dataclass(frozen=True)
class BeatsReference:
    """Raised when any ``candidates`` row has lower accuracy than ``reference`` beyond noise.

    ``value``: the largest drop ``acc(reference) - acc(candidate)`` on their shared samples;
    ``threshold``: the noise margin at that comparison.
    """

    name: str
    reference: str
    candidates: tuple[str, ...]
    z: float = 1.0
    min_margin: float = 0.005

    def __call__(self, rows: Mapping[str, RowLike], zero_gradient: torch.Tensor | None = None) -> Flag:
        ref = rows[self.reference]
        compared = []  # (drop - margin, drop, margin, candidate, acc_ref, acc_candidate, n)
        for name in self.candidates:
            shared = _shared(ref, rows[name])
            if shared.numel() == 0:
                continue
            acc_ref, acc = _accuracy_on(ref, shared), _accuracy_on(rows[name], shared)
            margin = noise_margin(shared.numel(), acc_ref, z=self.z, min_margin=self.min_margin)
            compared.append((acc_ref - acc - margin, acc_ref - acc, margin, name, acc_ref, acc, shared.numel()))
        if not compared:
            return Flag(self.name, False, 0.0, 0.0, f"no samples shared by {self.reference} and {self.candidates}")
        _, drop, margin, name, acc_ref, acc, n = max(compared)
        raised = drop > margin
        msg = (f"{name} {acc:.2%} vs {self.reference} {acc_ref:.2%} on {n} shared samples "
               f"(lower by {drop:+.2%}, noise margin {margin:.2%})")
        if raised:
            msg += ": gradients of the white-box attack may be obfuscated"
        return Flag(self.name, raised, float(drop), float(margin), msg)


@dataclass(frozen=True)
class FallsToZero:
    """Raised when robust accuracy under ``row`` (a large eps) stays above ``max_accuracy``."""

    name: str
    row: str
    max_accuracy: float = 0.05

    def __call__(self, rows: Mapping[str, RowLike], zero_gradient: torch.Tensor | None = None) -> Flag:
        acc = rows[self.row].correct.float().mean().item()
        raised = acc > self.max_accuracy
        msg = f"{self.row}: robust accuracy {acc:.2%} (expected <= {self.max_accuracy:.0%})"
        if raised:
            msg += ": a large eps should break every sample; gradients may be obfuscated"
        return Flag(self.name, raised, acc, self.max_accuracy, msg)


@dataclass(frozen=True)
class ZeroGradients:
    """Raised when the fraction of samples with an all-zero input gradient exceeds ``tolerance``."""

    name: str = "zero-gradients"
    tolerance: float = 0.0

    def __call__(self, rows: Mapping[str, RowLike], zero_gradient: torch.Tensor | None = None) -> Flag:
        if zero_gradient is None:
            raise ValueError(f"check {self.name!r} needs the zero-gradient measurement of the protocol")
        frac = zero_gradient.float().mean().item() if zero_gradient.numel() else 0.0
        raised = frac > self.tolerance
        msg = f"{frac:.2%} of samples have an all-zero input gradient"
        if raised:
            msg += ": gradient-based attacks cannot move them"
        return Flag(self.name, raised, frac, self.tolerance, msg)


def zero_gradient_mask(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BoolTensor ``[B]``: True where d CE / d x at the clean input is exactly zero.

    Eval mode, fp32, through ``torch.autograd.grad`` (parameter gradients untouched).
    """
    x = images.detach().float().requires_grad_(True)
    with eval_mode(model), full_precision(x.device), torch.enable_grad():
        loss = F.cross_entropy(decode(model(x)), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad.flatten(1).abs().amax(1) == 0
