"""Spiking VGG5 / VGG11 (conv-BN-neuron blocks, average pooling, 3-layer classifier).

VGG11: 64-A-128-256-A-512-512-512-A-512-512, then Linear(512*4*4, 4096)-neuron-
Linear(4096, 4096)-neuron-Linear(4096, classes).  VGG5: 64-A-128-128-A, then the same
classifier on 128*8*8 inputs.  ``width`` scales every conv width and
``classifier_width`` sets the hidden size of the classifier (CPU presets shrink both).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import SpikingNetwork, Synapse, _Trace, fold

VGG_LAYOUTS = {
    "vgg5": (64, "A", 128, 128, "A"),
    "vgg11": (64, "A", 128, 256, "A", 512, 512, 512, "A", 512, 512),
}


class SpikingVGG(SpikingNetwork):
    def __init__(
        self,
        layout: tuple,
        num_classes: int = 10,
        timesteps: int = 8,
        neuron: str = "dlif",
        width: float = 1.0,
        classifier_width: int = 4096,
        image_size: int = 32,
        in_channels: int = 3,
        mean=None,
        std=None,
        **neuron_kwargs,
    ) -> None:
        kw = {"mean": mean, "std": std}
        super().__init__(timesteps, in_channels, **{k: v for k, v in kw.items() if v is not None})
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if classifier_width < 1:
            raise ValueError(f"classifier_width must be >= 1, got {classifier_width}")
        self.layers = nn.ModuleList()
        self._synapses: list[tuple[int, list[int]]] = []  # (neuron index, op indices)
        channels, size = in_channels, image_size
        for item in layout:
            if item == "A":
                self.layers.append(nn.AvgPool2d(2))
                size //= 2
                continue
            out = max(1, int(round(item * width)))
            self.layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=False))
            self.layers.append(nn.BatchNorm2d(out))
            self.layers.append(self._neuron(neuron, neuron_kwargs))
            n = len(self.layers)
            self._synapses.append((n - 1, [n - 3, n - 2]))
            channels = out
        self.layers.append(nn.Flatten())
        features = channels * size * size
        for _ in range(2):
            self.layers.append(nn.Linear(features, classifier_width))
            self.layers.append(self._neuron(neuron, neuron_kwargs))
            n = len(self.layers)
            self._synapses.append((n - 1, [n - 2]))
            features = classifier_width
        self.head = nn.Linear(features, num_classes)
        self.num_classes = num_classes

    def run(self, seq: torch.Tensor, trace: _Trace) -> torch.Tensor:
        x = seq
        pending: list[nn.Module] = []
        for layer in self.layers:
            if hasattr(layer, "timesteps"):
                if pending:
                    x = fold(nn.Sequential(*pending), x)
                    pending = []
                x = self._fire(layer, x, trace)
            else:
                pending.append(layer)
        if pending:
            x = fold(nn.Sequential(*pending), x)
        return fold(self.head, x)

    def synapses(self) -> list[Synapse]:
        return [
            Synapse(f"layers.{n}", self.layers[n], [self.layers[i] for i in ops]) for n, ops in self._synapses
        ]


def vgg5(**kwargs) -> SpikingVGG:
    return SpikingVGG(VGG_LAYOUTS["vgg5"], **kwargs)


def vgg11(**kwargs) -> SpikingVGG:
    return SpikingVGG(VGG_LAYOUTS["vgg11"], **kwargs)
