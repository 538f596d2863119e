"""RFGSM as the authors trained with it (PROTOCOL.md; Wong et al. 2019 style).

x' = clamp(x + init_std * N(0, 1), 0, 1);  x_adv = clamp(x' + step * sign(grad_x' CE), 0, 1).
Its ``eps`` (the ball its outputs are projected to) is ``step + 6 * init_std``.
"""
from __future__ import annotations

import torch

from .base import Attack, check_eps


class RFGSM(Attack):
    name = "rfgsm"

    def __init__(self, step: float = 4 / 255, init_std: float = 0.001) -> None:
        self.step = check_eps("step", step)
        if init_std < 0:
            raise ValueError(f"init_std={init_std!r} is invalid: allowed >= 0")
        self.init_std = float(init_std)
        # the ball that contains every RFGSM output (noise is Gaussian, clip at 6 sigma)
        super().__init__(min(1.0, self.step + 6 * self.init_std))

    def perturb(self, model, images, labels, generator):
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        start = (images + self.init_std * noise).clamp(0.0, 1.0)
        _, grad = self.input_grad(model, start, labels)
        return (start + self.step * grad.sign()).clamp(0.0, 1.0)
