"""SA-PGD with the ASSG surrogate (Wang et al., CVPR 2026, arXiv 2512.22522), L-inf.

Stable adaptive PGD: Adam-like steps on per-sample L1-normalised gradients, clipped at every step:

    g1 = g / mean|g|,   g2 = g^2 / mean(g^2)                 (per sample, over all pixels)
    m  = mu * m + g1,   v = nu * v + g2                       (m = g1, v = g2 at the first step)
    x  = P(x + clip(eta * m / (sqrt(v) + 1e-12), -eta, eta))  (P: the eps-ball and [0, 1])

from a uniform random start in the eps-ball, with ``eta = eps`` halved at APGD's checkpoints
(:func:`~stable_snn.attacks.apgd.apgd_checkpoints`; 22, 41, 57, 70, 80, 87, 93, 99 for 100 steps),
unconditionally. The gradient comes through the ASSG surrogate (:mod:`.assg`) unless ``assg`` is
None (then through the model's own surrogate). Loss: cross-entropy.

Choices where the description leaves room (from the authors' public implementation): ``mu = 0.5``,
``nu = 0.8``, the initial step ``eps``, the step halved at every checkpoint without APGD's
conditions and without restarting from the best point. As for our APGD: the start is drawn from the
caller's generator; only samples the model classifies correctly are attacked; the first point that
fooled the model is returned, else the highest-loss point.
"""
from __future__ import annotations

import torch

from .apgd import apgd_checkpoints, ce_loss
from .assg import ASSG, adaptive_sharpness
from .base import Attack, check_eps, project


class SAPGD(Attack):
    """SA-PGD through the ASSG surrogate (``assg=ASSG()``, row ``assg-sapgd``) or the model's own (``assg=None``).

    Args:
        eps: radius of the L-inf ball.
        steps: iterations (100 in the adaptive protocol).
        momentum: ``mu``, decay of the first moment.
        second_moment: ``nu``, decay of the second moment.
        assg: the surrogate's hyper-parameters, or None for the model's own surrogate.
    """

    def __init__(self, eps: float = 8 / 255, steps: int = 100, momentum: float = 0.5, second_moment: float = 0.8,
                 assg: ASSG | None = ASSG()) -> None:
        super().__init__(eps)
        if int(steps) < 1:
            raise ValueError(f"steps={steps!r} is invalid: allowed an integer >= 1")
        self.steps = int(steps)
        self.momentum = check_eps("momentum", momentum, lo_open=False)
        self.second_moment = check_eps("second_moment", second_moment, lo_open=False)
        if assg is not None and not isinstance(assg, ASSG):
            raise ValueError(f"assg must be an ASSG or None, got {assg!r}")
        self.assg = assg

    @property
    def name(self) -> str:
        return "assg-sapgd" if self.assg is not None else "sa-pgd"

    def perturb(self, model, images, labels, generator):
        with torch.no_grad():
            idx = (self.get_logits(model, images).argmax(1) == labels).nonzero().squeeze(1)
        adv = images.clone()
        if idx.numel() == 0:
            return adv
        if self.assg is None:
            adv[idx] = self._run(model, images[idx], labels[idx], generator)
        else:
            with adaptive_sharpness(model, self.assg):  # fresh statistics for this batch
                adv[idx] = self._run(model, images[idx], labels[idx], generator)
        return adv

    def _run(self, model, x, y, generator):
        """One SA-PGD run on ``x`` ``[B, C, H, W]``: adversarial or highest-loss points ``[B, C, H, W]``."""
        eps = self.eps
        shape = (-1,) + (1,) * (x.dim() - 1)
        dims = tuple(range(1, x.dim()))
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_cur = project(x + (2 * noise - 1) * eps, x, eps)
        logits, loss, grad = self.loss_grad(model, x_cur, y, ce_loss)
        fooled = logits.argmax(1) != y
        x_adv, x_best, loss_best = x_cur.clone(), x_cur.clone(), loss.clone()
        eta = torch.full((x.shape[0],), eps, device=x.device, dtype=x.dtype).view(shape)
        halve_at = set(apgd_checkpoints(self.steps)[1:])
        m = v = None
        for k in range(self.steps):
            g1 = grad / grad.abs().mean(dims, keepdim=True).clamp_min(1e-30)
            g2 = grad.square() / grad.square().mean(dims, keepdim=True).clamp_min(1e-30)
            m = g1 if m is None else self.momentum * m + g1
            v = g2 if v is None else self.second_moment * v + g2
            step = torch.maximum(torch.minimum(eta * m / (v.sqrt() + 1e-12), eta), -eta)
            x_cur = project(x_cur + step, x, eps)
            logits, loss, grad = self.loss_grad(model, x_cur, y, ce_loss)
            newly = (logits.argmax(1) != y) & ~fooled
            x_adv[newly] = x_cur[newly]
            fooled |= newly
            better = loss > loss_best
            x_best[better], loss_best[better] = x_cur[better], loss[better]
            if k + 1 in halve_at:
                eta = eta / 2
        return torch.where(fooled.view(shape), x_adv, x_best)
