"""FGSM (Goodfellow et al. 2015, Eq. 3): x + eps * sign(grad_x CE)."""
from __future__ import annotations

from .base import Attack


class FGSM(Attack):
    name = "fgsm"

    def perturb(self, model, images, labels, generator):
        _, grad = self.input_grad(model, images, labels)
        return images + self.eps * grad.sign()
