"""The contract every attack follows (torchattacks-style, without its global state).

``attack(model, images, labels, generator=None) -> adversarial images``:

* images ``[B, C, H, W]`` in [0, 1]; the result stays in [0, 1] and in the eps-ball;
* the model runs with BatchNorm in eval mode (its mode is restored afterwards); the
  surrogate gradient of every spiking layer is on in eval mode too;
* input gradients are computed in fp32 with autocast disabled, through
  ``torch.autograd.grad`` so parameter gradients are never touched;
* randomness comes from the caller's ``torch.Generator`` only.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def decode(output) -> torch.Tensor:
    """Logits ``[B, classes]`` from a model output: spiking logits ``[T, B, C]`` are averaged over T."""
    logits = output.logits if hasattr(output, "logits") else output
    return logits.mean(0) if logits.dim() == 3 else logits


@contextmanager
def eval_mode(model: nn.Module):
    """Run ``model`` in eval mode (BatchNorm on running statistics) and restore each module's mode."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def full_precision(device: torch.device):
    """Disable autocast so attack gradients are computed in fp32."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def check_images(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be [B]={images.shape[0]}, got {tuple(labels.shape)}")


def check_eps(name: str, value: float, lo_open: bool = True) -> float:
    value = float(value)
    if not (0.0 < value <= 1.0 if lo_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name}={value!r} is invalid: allowed {'(0, 1]' if lo_open else '[0, 1]'}")
    return value


def project(adv: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Clamp to the L-inf eps-ball around ``images`` and to [0, 1]."""
    return torch.min(torch.max(adv, images - eps), images + eps).clamp_(0.0, 1.0)


class Attack:
    """Base class: subclasses implement :meth:`perturb` (called in eval mode, fp32)."""

    name = "attack"

    def __init__(self, eps: float = 8 / 255) -> None:
        self.eps = check_eps("eps", eps, lo_open=False)

    def get_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return decode(model(x))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="sum")

    def loss_grad(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, loss_fn=None):
        """(logits ``[B, C]``, ``loss_fn(logits, labels)``, d sum(loss) / d x) in fp32, parameters untouched.

        ``loss_fn`` defaults to :meth:`loss`; a per-sample loss ``[B]`` comes back per sample.
        """
        x = x.detach().float().requires_grad_(True)
        with torch.enable_grad():
            logits = self.get_logits(model, x)
            loss = (loss_fn or self.loss)(logits, labels)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return logits.detach(), loss.detach(), grad.detach()

    def input_grad(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor):
        """(logits, d loss / d x) in fp32 without touching parameter gradients."""
        logits, _, grad = self.loss_grad(model, x, labels)
        return logits, grad

    def ranked_classes(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, n_targets: int):
        """(robust ``[B]``: correctly classified, classes ``[B, C]`` by decreasing clean logit) for a targeted
        attack on the ``n_targets`` classes after the first; ValueError when the model has too few classes."""
        with torch.no_grad():
            logits = self.get_logits(model, images)
        if logits.shape[1] < n_targets + 1:
            raise ValueError(f"{self.name} with {n_targets} target classes needs at least {n_targets + 1} classes, "
                             f"the model has {logits.shape[1]}")
        return logits.argmax(1) == labels, logits.argsort(dim=1, descending=True)

    def perturb(self, model, images, labels, generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_images(images, labels)
        images = images.detach().float()
        if self.eps == 0:
            return images.clone()
        with eval_mode(model), full_precision(images.device):
            adv = self.perturb(model, images, labels, generator)
        return project(adv.detach(), images, self.eps)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"
