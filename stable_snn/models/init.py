"""Weight initialisation of the spiking networks, drawn from a caller's ``torch.Generator``.

Schemes (``model.init``):

* ``"authors"`` (default, the authors' public code): Kaiming-normal weights for every
  convolution and Linear layer (``mode="fan_out"``, ReLU gain: std = sqrt(2 / fan_out),
  fan_out = out_channels * k * k or out_features), zero biases, BatchNorm weight 1 and
  bias 0.  VGG convolutions carry a bias in this scheme, as in the authors' VGG.
* ``"pytorch"``: PyTorch's defaults (Kaiming-uniform with a = sqrt(5), biases uniform in
  +-1/sqrt(fan_in)), drawn from the same generator; VGG convolutions without bias.

DLIF gains start at 1 and WRN's convex combinations at (0.5, 0.5) in both schemes.  With a
generator, two builds of one seed are identical bit for bit whatever the global RNG holds;
without one, the draws come from torch's global generator (never reseeded here).
"""
from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("authors", "pytorch")


def check_init(scheme: str) -> str:
    if scheme not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {scheme!r}")
    return scheme


def _fan_in(weight: torch.Tensor) -> int:
    return weight.shape[1] * math.prod(weight.shape[2:])


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str = "authors", generator: torch.Generator | None = None) -> nn.Module:
    """Initialise every Conv2d, Linear and BatchNorm of ``model`` in place (module order) with ``scheme``."""
    check_init(scheme)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "authors":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            else:
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(_fan_in(m.weight))
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()  # weight 1, bias 0, running mean 0 / var 1
    return model
