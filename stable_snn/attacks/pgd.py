"""PGD (Madry et al. 2018, Eq. 4): L-inf projected signed-gradient ascent with a uniform random start."""
from __future__ import annotations

import torch

from .base import Attack, check_eps, project


class PGD(Attack):
    name = "pgd"

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, random_start: bool = True) -> None:
        super().__init__(eps)
        self.alpha = check_eps("alpha", alpha)
        if int(steps) < 1:
            raise ValueError(f"steps={steps!r} is invalid: allowed an integer >= 1")
        self.steps = int(steps)
        self.random_start = bool(random_start)

    def perturb(self, model, images, labels, generator):
        adv = images.clone()
        if self.random_start:
            noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
            adv = project(images + (2 * noise - 1) * self.eps, images, self.eps)
        for _ in range(self.steps):
            _, grad = self.input_grad(model, adv, labels)
            adv = project(adv + self.alpha * grad.sign(), images, self.eps)
        return adv
