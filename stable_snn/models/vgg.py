"""Spiking VGG5 / VGG11: conv-BN-neuron(-pool) blocks, then a 3-layer classifier.

VGG11: 64-A-128-256-A-512-512-512-A-512-512, then Linear(512*4*4, 4096)-neuron-
Linear(4096, 4096)-neuron-Linear(4096, classes).  VGG5: 64-A-128-128-A, then the same
classifier on 128*8*8 inputs.  ``A`` is a 2x2 average pooling of the spikes of the block
before it (:class:`~stable_snn.models.blocks.ConvBNSpiking` with ``pool=True``).  ``width``
scales every conv width and ``classifier_width`` sets the hidden size of the classifier
(CPU presets shrink both).  Weights come from ``init`` (:mod:`.init`) drawn from ``generator``;
the convolutions carry a bias in the authors' scheme (their VGG), none in PyTorch's.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import SpikingNetwork
from .blocks import ConvBNSpiking, LinearSpiking, Trace
from .init import check_init, init_weights

VGG_LAYOUTS = {
    "vgg5": (64, "A", 128, 128, "A"),
    "vgg11": (64, "A", 128, 256, "A", 512, 512, 512, "A", 512, 512),
}


def conv_stages(layout: tuple) -> list[tuple[int, bool]]:
    """``(channels, pooled)`` per conv block of a layout (``"A"`` pools the block before it)."""
    stages: list[tuple[int, bool]] = []
    for item in layout:
        if item == "A":
            if not stages or stages[-1][1]:
                raise ValueError(f"a pooling 'A' must follow a conv width in a VGG layout, got {layout}")
            stages[-1] = (stages[-1][0], True)
        else:
            stages.append((item, False))
    return stages


class SpikingVGG(SpikingNetwork):
    """``features`` (conv blocks) -> ``classifier`` (two Linear-neuron blocks) -> ``head`` (Linear)."""

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
        backend: str = "eager",
        init: str = "authors",
        generator: torch.Generator | None = None,
        **neuron_kwargs,
    ) -> None:
        kw = {"mean": mean, "std": std}
        super().__init__(timesteps, in_channels, backend=backend, **{k: v for k, v in kw.items() if v is not None})
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if classifier_width < 1:
            raise ValueError(f"classifier_width must be >= 1, got {classifier_width}")
        self.image_size = image_size  # the classifier's input size fixes the image size
        conv_bias = check_init(init) == "authors"
        channels, size = in_channels, image_size
        self.features = nn.ModuleList()
        for item, pooled in conv_stages(layout):
            out = max(1, int(round(item * width)))
            self.features.append(ConvBNSpiking(channels, out, self._neuron(neuron, neuron_kwargs), pool=pooled,
                                               bias=conv_bias))
            channels, size = out, size // 2 if pooled else size
        fin = channels * size * size
        self.classifier = nn.ModuleList([
            LinearSpiking(fin, classifier_width, self._neuron(neuron, neuron_kwargs)),
            LinearSpiking(classifier_width, classifier_width, self._neuron(neuron, neuron_kwargs), records_current=True),
        ])
        self.head = nn.Linear(classifier_width, num_classes)
        self.num_classes = num_classes
        self.backend = backend
        init_weights(self, init, generator)

    def forward_trunk(self, x: torch.Tensor, trace: Trace) -> torch.Tensor:
        """``[Tx, B, C, H, W]`` -> conv blocks -> classifier blocks -> pre-logits ``[T, B, classifier_width]``."""
        for block in self.features:
            x = block(x, trace)
        for block in self.classifier:
            x = block(x, trace)
        return x


def vgg5(**kwargs) -> SpikingVGG:
    return SpikingVGG(VGG_LAYOUTS["vgg5"], **kwargs)


def vgg11(**kwargs) -> SpikingVGG:
    return SpikingVGG(VGG_LAYOUTS["vgg11"], **kwargs)
