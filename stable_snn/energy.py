"""Firing rates and synaptic operations (SOPs), the usual SNN energy proxy.

An SOP is one accumulate triggered by one spike: a spike entering a Conv2d drives
``out_channels * k_h * k_w / (stride_h * stride_w)`` accumulates, one entering a
Linear layer ``out_features``.  Inputs that are not binary (the encoded image, the
residual sums of WRN) are counted as dense multiply-accumulates (MACs) instead, per time
step.  The counts come from forward pre-hooks on every Conv2d and Linear layer, which the
models call as modules on every backend; a static input (``[1*B, ...]``, computed once and
broadcast over the T steps on the fused backends) counts T times, as it stands for T steps.
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


def _steps(module: nn.Module, x: torch.Tensor, batch: int) -> int:
    """Time steps held by a layer input: ``[Tx*B, C, H, W]`` for a Conv2d, ``[..., F]`` for a Linear."""
    rows = x.shape[0] if isinstance(module, nn.Conv2d) else x[..., 0].numel()
    return rows // batch


@torch.no_grad()
def activity(model, images: torch.Tensor) -> ActivityReport:
    """Measure firing rates and SOPs of ``model`` on ``images`` ([B, C, H, W]) in eval mode."""
    counts = {"sops": 0.0, "macs": 0.0}
    B, T = images.shape[0], model.timesteps

    def hook(module, inputs):
        x = inputs[0]
        copies = T // _steps(module, x, B)  # T for a static input, else 1
        if torch.all((x == 0) | (x == 1)):
            counts["sops"] += copies * float(torch.count_nonzero(x)) * _fan_out(module)
        else:
            counts["macs"] += copies * x.numel() * _fan_out(module)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        features = model.forward_features(images, record_spikes=True)
        model.forward_head(features)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    names = [n for n, m in model.named_modules() if isinstance(m, LIF)]
    rates = {name: float(s.float().mean()) for name, s in zip(names, features.spikes)}
    return ActivityReport(rates, counts["sops"] / B, counts["macs"] / B)
