"""FAB-T, the targeted fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted
adversarial examples with a fast adaptive boundary attack", ICML, Alg. 1), L-inf.

FAB looks for the adversarial example closest to the image ``x0``. For a target class ``t``, at
the current point ``x`` it linearises the boundary between the label ``y`` and ``t``,
``f(z) = z_t(z) - z_y(z) ~ f(x) + <g, z - x>`` (``g = grad f(x)``), and projects both ``x`` and
``x0`` onto that hyperplane within the box [0, 1] (:func:`linf_box_projection`, the minimal L-inf
step): steps ``d`` (from ``x``) and ``d0`` (from ``x0``). The next point (Eq. 9 of the paper) is

    x <- clip((1 - a) (x + eta d) + a (x0 + eta d0), 0, 1),   a = min(|d| / (|d| + |d0|), alpha_max)

with the overshoot ``eta``. When ``x`` is misclassified it is recorded if closer to ``x0`` than
the best so far, and pulled back towards ``x0``: ``x <- x0 + beta (x - x0)``. A sample counts as
fooled when the closest misclassified point lies within ``eps`` of ``x0``.

FAB-T as AutoAttack runs it: for each of the ``n_target_classes`` classes with the highest
clean logits after the label, ``n_restarts`` runs on the samples still robust, the first from
``x0`` itself and the others from a uniform random point within ``eps / 2`` of it (drawn from
the caller's generator; AutoAttack normalises its draw by its largest entry). Defaults: AutoAttack's
100 iterations, ``alpha_max = 0.1``, ``eta = 1.05``, ``beta = 0.9``, 9 targets, 1 restart. When the
hyperplane lies beyond the box, the step moves every coordinate as far as the box allows towards it.
"""
from __future__ import annotations

import torch

from .base import Attack, check_eps


def linf_box_projection(points: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The step ``d`` of least L-inf norm with ``<w, d> = c`` and ``points + d`` in [0, 1].

    points, w: ``[B, n]``; c: ``[B]``. With ``s = sign(c)``, the largest ``s <w, d>`` reachable
    within ``|d_i| <= lam`` is ``G(lam) = sum_i |w_i| min(lam, r_i)``, where ``r_i`` is the room of
    coordinate ``i`` in the direction ``s sign(w_i)`` (``1 - p_i`` up, ``p_i`` down); ``G`` is
    piecewise linear and increasing, so the optimal ``lam`` solves ``G(lam) = |c|`` on the segment
    between two sorted rooms, and ``d_i = s sign(w_i) min(lam, r_i)``. When ``G(max r) < |c|`` (the
    hyperplane is out of the box) every coordinate moves by its whole room. Returns ``[B, n]``.
    """
    sign = torch.sign(c)[:, None] * torch.sign(w)  # +1: move up, -1: down, 0: no use
    room = torch.where(sign > 0, 1.0 - points, points).clamp_min(0.0) * (sign != 0)
    target = c.abs()
    room_sorted, order = room.sort(dim=1)
    w_sorted = w.abs().gather(1, order)
    cum_wr = (w_sorted * room_sorted).cumsum(1)
    cum_w = w_sorted.cumsum(1)
    total = cum_w[:, -1:]
    reach = cum_wr + room_sorted * (total - cum_w)  # G at each sorted room
    k = (reach < target[:, None]).sum(1, keepdim=True)  # first segment end with G >= |c|
    feasible = k.squeeze(1) < room.shape[1]
    before = (k - 1).clamp_min(0)
    first = k == 0
    wr_before = torch.where(first, 0.0, cum_wr.gather(1, before))
    w_from = total - torch.where(first, 0.0, cum_w.gather(1, before))
    lam = (target[:, None] - wr_before) / w_from.clamp_min(1e-30)
    lam = torch.where(feasible[:, None], lam, torch.full_like(lam, float("inf")))
    return sign * torch.minimum(room, lam)


class FABT(Attack):
    """FAB-T, L-inf (see the module docstring).

    Args:
        eps: radius within which a found adversarial example counts.
        steps: iterations per run (100 in AutoAttack).
        n_restarts: runs per target class (the first from the image itself).
        n_target_classes: target classes, by rank of the clean logits after the label (9 in AutoAttack).
        alpha_max, eta, beta: the paper's bias limit, overshoot and backward step.
    """

    name = "fab-t"

    def __init__(self, eps: float = 8 / 255, steps: int = 100, n_restarts: int = 1, n_target_classes: int = 9,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> None:
        super().__init__(eps)
        for field, value in (("steps", steps), ("n_restarts", n_restarts), ("n_target_classes", n_target_classes)):
            if int(value) < 1:
                raise ValueError(f"{field}={value!r} is invalid: allowed an integer >= 1")
        if not eta >= 1.0:
            raise ValueError(f"eta={eta!r} is invalid: allowed >= 1")
        self.steps, self.n_restarts, self.n_target_classes = int(steps), int(n_restarts), int(n_target_classes)
        self.alpha_max = check_eps("alpha_max", alpha_max)
        self.eta = float(eta)
        self.beta = check_eps("beta", beta)

    def perturb(self, model, images, labels, generator):
        robust, ranked = self.ranked_classes(model, images, labels, self.n_target_classes)
        adv = images.clone()
        for rank in range(1, self.n_target_classes + 1):
            for restart in range(self.n_restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    return adv
                x0 = images[idx]
                start = x0 if restart == 0 else self._random_start(x0, generator)
                found, dist = self._single_run(model, x0, labels[idx], ranked[idx, rank], start)
                ok = dist <= self.eps
                adv[idx[ok]] = found[ok]
                robust[idx[ok]] = False
        return adv

    def _random_start(self, x0: torch.Tensor, generator) -> torch.Tensor:
        noise = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return (x0 + (2 * noise - 1) * self.eps / 2).clamp(0.0, 1.0)

    def _boundary(self, model, x, y, t):
        """``f = z_t - z_y`` ``[B]`` and its input gradient ``[B, n]`` (fp32, parameters untouched)."""
        _, f, g = self.loss_grad(model, x, y, lambda z, yy: z.gather(1, t[:, None]).squeeze(1)
                                 - z.gather(1, yy[:, None]).squeeze(1))
        return f, g.flatten(1)

    def _single_run(self, model, x0, y, t, start):
        """One run: (closest misclassified points found ``[B, C, H, W]``, their L-inf distance ``[B]``, inf if none)."""
        b = x0.shape[0]
        flat0 = x0.flatten(1)
        x = start.clone()
        best = x0.clone()
        dist = torch.full((b,), float("inf"), device=x0.device)
        for _ in range(self.steps):
            f, g = self._boundary(model, x, y, t)
            flat = x.flatten(1)
            # from x and from x0 onto the plane <g, z - x> = -f, in one call
            both = linf_box_projection(torch.cat((flat, flat0)), torch.cat((g, g)),
                                       torch.cat((-f, (g * (flat - flat0)).sum(1) - f)))
            d, d0 = both[:b], both[b:]
            n1 = d.abs().amax(1).clamp_min(1e-8)
            n0 = d0.abs().amax(1).clamp_min(1e-8)
            a = (n1 / (n1 + n0)).clamp(0.0, self.alpha_max)[:, None]
            flat = ((1 - a) * (flat + self.eta * d) + a * (flat0 + self.eta * d0)).clamp(0.0, 1.0)
            x = flat.view_as(x0)
            with torch.no_grad():
                fooled = self.get_logits(model, x).argmax(1) != y
            if fooled.any():
                r = (x - x0).flatten(1).abs().amax(1)
                closer = fooled & (r < dist)
                best[closer], dist[closer] = x[closer], r[closer]
                x = torch.where(fooled.view(-1, 1, 1, 1), x0 + self.beta * (x - x0), x)
        return best, dist
