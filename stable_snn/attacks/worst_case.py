"""Worst case over attacks, per sample (AutoAttack's rule): robust only if every attack fails."""
from __future__ import annotations

import torch


def worst_case(correct: dict[str, torch.Tensor]) -> torch.Tensor:
    """``{attack: BoolTensor[N]} -> BoolTensor[N]``, True where the sample is correct under every attack.

    All tensors must be boolean, one-dimensional and of the same length; include the clean
    row so that a sample misclassified without attack never counts as robust.
    """
    if not correct:
        raise ValueError("worst_case needs at least one attack, got an empty dict")
    items = list(correct.items())
    n = items[0][1].shape
    for name, c in items:
        if not isinstance(c, torch.Tensor) or c.dtype != torch.bool or c.dim() != 1:
            raise ValueError(f"correct[{name!r}] must be a BoolTensor[N], got "
                             f"{getattr(c, 'dtype', type(c).__name__)} {tuple(getattr(c, 'shape', ()))}")
        if c.shape != n:
            raise ValueError(f"correct[{name!r}] has shape {tuple(c.shape)}, expected {tuple(n)} "
                             f"like correct[{items[0][0]!r}]")
    out = items[0][1].clone()
    for _, c in items[1:]:
        out &= c.to(out.device)
    return out
