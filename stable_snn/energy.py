"""Firing rates and synaptic operations (SOPs), the usual SNN energy proxy.

An SOP is one accumulate triggered by one spike: a spike entering a Conv2d drives
``out_channels * k_h * k_w / (stride_h * stride_w)`` accumulates, one entering a
Linear layer ``out_features``.  Inputs that are not binary (the encoded image, the
residual sums of WRN) are counted as dense multiply-accumulates (MACs) instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .neurons import LIF


@dataclass
class ActivityReport:
    firing_rates: dict[str, float]  # spiking layer name -> spikes per neuron per step
    sops_per_image: float  # synaptic operations (spike-driven accumulates)
    dense_macs_per_image: float  # MACs on non-binary inputs


def _fan_out(module: nn.Module) -> float:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        sh, sw = module.stride
        return module.out_channels * kh * kw / (sh * sw)
    return float(module.out_features)


@torch.no_grad()
def activity(model, images: torch.Tensor) -> ActivityReport:
    """Measure firing rates and SOPs of ``model`` on ``images`` ([B, C, H, W]) in eval mode."""
    counts = {"sops": 0.0, "macs": 0.0}

    def hook(module, inputs):
        x = inputs[0]
        nnz = float(torch.count_nonzero(x))
        if torch.all((x == 0) | (x == 1)):
            counts["sops"] += nnz * _fan_out(module)
        else:
            counts["macs"] += x.numel() * _fan_out(module)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        out = model(images, return_internals=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    names = [n for n, m in model.named_modules() if isinstance(m, LIF)]
    rates = {name: float(s.float().mean()) for name, s in zip(names, out.spikes)}
    B = images.shape[0]
    return ActivityReport(rates, counts["sops"] / B, counts["macs"] / B)
