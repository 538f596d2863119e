"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness...", Alg. 1), L-inf.

Projected gradient ascent with an adaptive step size and momentum:

    z[k+1] = P(x[k] + eta[k] * sign(grad f(x[k])))
    x[k+1] = P(x[k] + a * (z[k+1] - x[k]) + (1 - a) * (x[k] - x[k-1])),   a = 0.75 (a = 1 at k = 0)

with ``eta[0] = 2 * eps``. At the checkpoints ``w_j = ceil(p_j * N)`` with ``p_0 = 0``,
``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` the step size of a
sample is halved, and the sample restarts from its best point so far, when

1. the loss increased in fewer than ``rho * (w_j - w_{j-1})`` of the steps since ``w_{j-1}``, or
2. the step size was not halved at ``w_{j-1}`` and the best loss did not change since then.

Losses: cross-entropy (APGD-CE) or the untargeted DLR loss (APGD-DLR, Eq. 6 of the paper):
``DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >= ...``
the sorted logits. ``n_restarts`` runs start from fresh uniform random points in the eps-ball
and only attack the samples no earlier run has fooled.

APGD-T (:class:`APGDT`, AutoAttack's targeted version, Sec. 5 of the paper): for each of the
``n_target_classes`` classes with the highest clean logits after the label (ranks 2, 3, ...), one
APGD run on the samples still robust with the targeted DLR loss
``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``; a sample counts as fooled when it is
misclassified (as any class), as in AutoAttack.

Where this differs from the AutoAttack code (which follows the same paper): the checkpoints
are the paper's fractions (the code uses ``int(0.22 N)`` with a fixed decrement); condition 1
uses the paper's strict ``<``; the check at ``w_j`` replaces ``x[w_j]`` itself by the best point
(as the code does; Alg. 1 takes one more step first); at such a restart the momentum term is
reset (``x[k-1] = x[k] = x_best``); the start point is drawn from the caller's generator, never
by reseeding the global RNG. Samples the model already misclassifies are returned unchanged;
for the others the first point that fooled the model is returned, else the highest-loss point.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Attack, check_eps, project

LOSSES = ("ce", "dlr")


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR loss per sample, ``[B, C] -> [B]`` (Croce & Hein 2020, Eq. 6); needs C >= 3."""
    if logits.dim() != 2 or logits.shape[1] < 3:
        raise ValueError(f"DLR needs logits of shape [B, C >= 3], got {tuple(logits.shape)}")
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    is_label = F.one_hot(labels, logits.shape[1]).bool()
    z_other = logits.masked_fill(is_label, float("-inf")).max(dim=1).values
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss per sample, ``[B, C] -> [B]``: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``; C >= 4."""
    if logits.dim() != 2 or logits.shape[1] < 4:
        raise ValueError(f"targeted DLR needs logits of shape [B, C >= 4], got {tuple(logits.shape)}")
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample, ``[B, C] -> [B]``."""
    return F.cross_entropy(logits, labels, reduction="none")


def apgd_checkpoints(n_iter: int) -> list[int]:
    """The iterations ``0 = w_0 < w_1 < ... < n_iter`` at which APGD checks its step size.

    ``w_j = ceil(p_j * n_iter)``, ``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``. Duplicates (small ``n_iter``) are
    dropped and the list always starts with 0; a check at ``n_iter`` itself would not act and
    is left out. For ``n_iter = 10``: ``[0, 3, 5, 6, 7, 8, 9]``; for 100: ``[0, 22, 41, 57, 70, 80, 87, 93, 99]``.
    """
    if int(n_iter) < 1:
        raise ValueError(f"n_iter={n_iter!r} is invalid: allowed an integer >= 1")
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round away float noise (0.7 * 10 = 7.000000000000001) before the ceiling
    w = sorted({math.ceil(round(pj * n_iter, 9)) for pj in p})
    return [0] + [x for x in w if 0 < x < n_iter]


class APGD(Attack):
    """APGD-CE (``loss="ce"``) or APGD-DLR (``loss="dlr"``), L-inf, untargeted.

    Args:
        eps: radius of the L-inf ball (8/255 in the paper's Table 1).
        steps: iterations N per run (10 in the paper's table; 100 in AutoAttack).
        n_restarts: independent runs from random starts, each on the still-robust samples.
        rho: threshold of checkpoint condition 1.
        momentum: ``a`` of the update (0.75).
        loss: ``"ce"`` or ``"dlr"``.
    """

    def __init__(self, eps: float = 8 / 255, steps: int = 10, n_restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, loss: str = "ce") -> None:
        super().__init__(eps)
        if int(steps) < 1:
            raise ValueError(f"steps={steps!r} is invalid: allowed an integer >= 1")
        if int(n_restarts) < 1:
            raise ValueError(f"n_restarts={n_restarts!r} is invalid: allowed an integer >= 1")
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is invalid: allowed one of {', '.join(LOSSES)}")
        self.steps = int(steps)
        self.n_restarts = int(n_restarts)
        self.rho = check_eps("rho", rho)
        self.momentum = check_eps("momentum", momentum)
        self.loss_name = loss

    @property
    def name(self) -> str:
        return f"apgd-{self.loss_name}"

    def sample_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return dlr_loss(logits, labels) if self.loss_name == "dlr" else ce_loss(logits, labels)

    def perturb(self, model, images, labels, generator):
        with torch.no_grad():
            robust = self.get_logits(model, images).argmax(1) == labels
        adv = images.clone()
        self._runs(model, images, labels, robust, adv, generator, self.sample_losses)
        return adv

    def _runs(self, model, images, labels, robust, adv, generator, loss_fn, targets=None) -> None:
        """``n_restarts`` runs on the ``robust`` samples, updating ``robust`` and ``adv`` in place.

        ``loss_fn(logits, labels)``, or ``loss_fn(logits, labels, targets)`` with ``targets`` ``[B]``.
        """
        for _ in range(self.n_restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            fn = loss_fn if targets is None else (lambda z, y, t=targets[idx]: loss_fn(z, y, t))
            x_out, fooled = self._single_run(model, images[idx], labels[idx], generator, fn)
            adv[idx] = x_out
            robust[idx[fooled]] = False

    def _single_run(self, model, x, y, generator, loss_fn):
        """One APGD run on ``x`` ``[B, C, H, W]``: (adversarial or best-loss points, fooled ``[B]``)."""
        eps, n_iter = self.eps, self.steps
        shape = (-1,) + (1,) * (x.dim() - 1)
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_cur = project(x + (2 * noise - 1) * eps, x, eps)
        x_prev = x_cur.clone()
        logits, loss_cur, grad = self.loss_grad(model, x_cur, y, loss_fn)

        fooled = logits.argmax(1) != y
        x_adv = x_cur.clone()  # first point that fooled the model (else overwritten by x_best at the end)
        x_best, loss_best, grad_best = x_cur.clone(), loss_cur.clone(), grad.clone()

        eta = torch.full((x.shape[0],), 2 * eps, device=x.device, dtype=x.dtype)
        checkpoints = apgd_checkpoints(n_iter)
        last_check = 0
        increases = torch.zeros(x.shape[0], device=x.device)
        loss_best_at_check = loss_best.clone()
        reduced_at_check = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

        for k in range(n_iter):
            a = 1.0 if k == 0 else self.momentum
            z = project(x_cur + eta.view(shape) * grad.sign(), x, eps)
            x_next = project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), x, eps)
            x_prev, x_cur = x_cur, x_next
            logits, loss_new, grad = self.loss_grad(model, x_cur, y, loss_fn)

            increases += (loss_new > loss_cur).float()
            loss_cur = loss_new
            newly = (logits.argmax(1) != y) & ~fooled
            x_adv[newly] = x_cur[newly]
            fooled |= newly
            better = loss_new > loss_best
            x_best[better], loss_best[better], grad_best[better] = x_cur[better], loss_new[better], grad[better]

            w = k + 1
            if w in checkpoints:
                window = w - last_check
                cond1 = increases < self.rho * window
                cond2 = ~reduced_at_check & (loss_best <= loss_best_at_check)
                reduce = cond1 | cond2
                eta[reduce] /= 2
                x_cur[reduce], x_prev[reduce] = x_best[reduce], x_best[reduce]
                grad[reduce], loss_cur[reduce] = grad_best[reduce], loss_best[reduce]
                reduced_at_check, loss_best_at_check = reduce, loss_best.clone()
                increases.zero_()
                last_check = w

        out = torch.where(fooled.view(shape), x_adv, x_best)
        return out, fooled


class APGDT(APGD):
    """APGD-T: targeted DLR, one run per target class (ranks 2..``n_target_classes + 1`` of the clean logits).

    Args: as :class:`APGD` (``n_restarts`` runs per target), and ``n_target_classes`` (9 in AutoAttack).
    """

    def __init__(self, eps: float = 8 / 255, steps: int = 100, n_restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, n_target_classes: int = 9) -> None:
        super().__init__(eps, steps, n_restarts, rho, momentum, loss="dlr")
        if int(n_target_classes) < 1:
            raise ValueError(f"n_target_classes={n_target_classes!r} is invalid: allowed an integer >= 1")
        self.n_target_classes = int(n_target_classes)

    @property
    def name(self) -> str:
        return "apgd-t"

    def perturb(self, model, images, labels, generator):
        robust, ranked = self.ranked_classes(model, images, labels, self.n_target_classes)
        adv = images.clone()
        for rank in range(1, self.n_target_classes + 1):
            self._runs(model, images, labels, robust, adv, generator, dlr_targeted_loss, ranked[:, rank])
        return adv
