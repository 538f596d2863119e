"""Sanity flags of an evaluation (Athalye et al. 2018; Carlini et al. 2019; AutoAttack's checks).

A white-box evaluation of an SNN is only trusted when the surrogate gradient is informative.
Signs that it is not, each computed by a check below from the per-row results of a protocol:

* an iterative attack weaker than a single-step one (:class:`WeakerThan`, PGD-k / APGD vs FGSM);
* the black-box Square attack fooling samples every white-box attack before it missed
  (:class:`OnlyFooledBy`, AutoAttack's rule: more than 0.2 % of the samples), or beating PGD-10
  on the same samples (:func:`beats_reference`);
* robust accuracy not near 0 at eps = 64/255, or an unbounded attack not reaching 0 %
  (:class:`FallsToZero`);
* PGD-100 more than 3 points below PGD-10: short attacks overstate (:class:`WeakerThan` with a
  fixed margin);
* input gradients that are exactly zero (:class:`ZeroGradients`).

Each check is a frozen dataclass called as ``check(rows, zero_gradient) -> Flag``; ``needs``
names the rows it reads. Comparisons run on the samples both rows cover. Unless a fixed
``margin`` is given, a difference counts when it exceeds the noise margin: one binomial standard
error ``sqrt(p (1 - p) / n)`` of the accuracy of the row expected to be the stronger, and at least
``min_margin`` (half a point).
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


def _on(row: RowLike, positions: torch.Tensor) -> torch.Tensor:
    """``row.correct`` at ``positions`` (which the row must cover), BoolTensor ``[len(positions)]``."""
    order = torch.argsort(row.indices)
    return row.correct[order][torch.searchsorted(row.indices[order], positions)]


def _fraction(mask: torch.Tensor) -> float:
    """The fraction of True in a BoolTensor, exactly (a float32 mean would put 5/100 above 0.05)."""
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def _shared(*rows: RowLike) -> torch.Tensor:
    common = set(rows[0].indices.tolist())
    for r in rows[1:]:
        common &= set(r.indices.tolist())
    return torch.tensor(sorted(common), dtype=torch.long)


@dataclass(frozen=True)
class WeakerThan:
    """Raised when a row expected to be at least as strong as another has the higher accuracy.

    ``pairs``: ``(expected stronger, expected weaker)`` row names. ``value``: the largest gap
    ``acc(stronger) - acc(weaker)`` beyond its margin; ``threshold``: the margin at that pair
    (``margin`` when fixed, else the noise margin of the accuracy of the row expected to be stronger).
    """

    name: str
    pairs: tuple[tuple[str, str], ...]
    margin: float | None = None
    z: float = 1.0
    min_margin: float = 0.005
    explanation: str = "gradients of the stronger attack may be obfuscated"

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for pair in self.pairs for n in pair))

    def __call__(self, rows: Mapping[str, RowLike], zero_gradient: torch.Tensor | None = None) -> Flag:
        compared = []  # (gap - margin, gap, margin, stronger, weaker, acc_s, acc_w, n)
        for strong, weak in self.pairs:
            shared = _shared(rows[strong], rows[weak])
            if shared.numel() == 0:
                continue
            n = shared.numel()
            count_s, count_w = int(_on(rows[strong], shared).sum()), int(_on(rows[weak], shared).sum())
            acc_s, acc_w = count_s / n, count_w / n
            m = self.margin if self.margin is not None else noise_margin(n, acc_s, z=self.z,
                                                                          min_margin=self.min_margin)
            gap = (count_s - count_w) / n  # exact: 40/100 - 37/100 is 0.030000000000000027 in floats
            compared.append((gap - m, gap, m, strong, weak, acc_s, acc_w, n))
        if not compared:
            return Flag(self.name, False, 0.0, 0.0, f"no samples shared by the rows of {self.pairs}")
        _, gap, m, strong, weak, acc_s, acc_w, n = max(compared)
        raised = gap > m
        msg = f"{strong} {acc_s:.2%} vs {weak} {acc_w:.2%} on {n} shared samples (higher by {gap:+.2%}, margin {m:.2%})"
        return Flag(self.name, raised, float(gap), float(m), msg + (f": {self.explanation}" if raised else ""))


def beats_reference(name: str, reference: str, candidates: tuple[str, ...], **kwargs) -> WeakerThan:
    """Raised when a ``candidates`` row has lower accuracy than ``reference`` beyond the margin."""
    kwargs.setdefault("explanation", "gradients of the white-box attack may be obfuscated")
    return WeakerThan(name, tuple((reference, c) for c in candidates), **kwargs)


@dataclass(frozen=True)
class OnlyFooledBy:
    """Raised when ``row`` fools more than ``tolerance`` of the samples that every row of ``others`` missed.

    With ``row`` the black-box Square chained after the white-box attacks (``others``), these are
    the samples only the black-box attack broke (AutoAttack's Square check, tolerance 0.2 %).
    """

    name: str
    row: str
    others: tuple[str, ...]
    tolerance: float = 0.002

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.row, *self.others)

    def __call__(self, rows: Mapping[str, RowLike], zero_gradient: torch.Tensor | None = None) -> Flag:
        shared = _shared(rows[self.row], *(rows[o] for o in self.others))
        if shared.numel() == 0:
            return Flag(self.name, False, 0.0, self.tolerance, f"no samples shared by {self.row} and {self.others}")
        missed = torch.stack([_on(rows[o], shared) for o in self.others]).all(0)
        only = _fraction(missed & ~_on(rows[self.row], shared))
        raised = only > self.tolerance
        msg = (f"{self.row} fooled {only:.2%} of {shared.numel()} samples that {len(self.others)} white-box rows "
               f"missed (tolerance {self.tolerance:.2%})")
        if raised:
            msg += ": the white-box attacks are weaker than the black-box one; gradients may be obfuscated"
        return Flag(self.name, raised, only, self.tolerance, msg)


@dataclass(frozen=True)
class FallsToZero:
    """Raised when robust accuracy under ``row`` (a large or unbounded eps) stays above ``max_accuracy``."""

    name: str
    row: str
    max_accuracy: float = 0.05

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.row,)

    def __call__(self, rows: Mapping[str, RowLike], zero_gradient: torch.Tensor | None = None) -> Flag:
        acc = _fraction(rows[self.row].correct)
        raised = acc > self.max_accuracy
        msg = f"{self.row}: robust accuracy {acc:.2%} (expected <= {self.max_accuracy:.0%})"
        if raised:
            msg += ": such an eps should break every sample; gradients may be obfuscated"
        return Flag(self.name, raised, acc, self.max_accuracy, msg)


@dataclass(frozen=True)
class ZeroGradients:
    """Raised when the fraction of samples with an all-zero input gradient exceeds ``tolerance``."""

    name: str = "zero-gradients"
    tolerance: float = 0.0
    needs: tuple[str, ...] = ()
    needs_zero_gradients: bool = True

    def __call__(self, rows: Mapping[str, RowLike], zero_gradient: torch.Tensor | None = None) -> Flag:
        if zero_gradient is None:
            raise ValueError(f"check {self.name!r} needs the zero-gradient measurement of the protocol")
        frac = _fraction(zero_gradient)
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
