"""Gaussian noise perturbation: clamp(x + sigma * N(0, 1), 0, 1) (sigma = 8/255 in the paper)."""
from __future__ import annotations

import torch

from .base import Attack, check_eps, check_images


class GaussianNoise(Attack):
    """Not gradient based; ``eps`` here is the noise's standard deviation, no projection."""

    name = "gaussian"

    def __init__(self, sigma: float = 8 / 255) -> None:
        super().__init__(check_eps("sigma", sigma))
        self.sigma = self.eps

    def __call__(self, model, images, labels, generator=None):
        check_images(images, labels)
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=torch.float32)
        return (images.detach().float() + self.sigma * noise).clamp(0.0, 1.0)
