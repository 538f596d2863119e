"""Spiking VGG5 / VGG11 (conv-BN-neuron blocks, average pooling, 3-layer classifier).

VGG11: 64-A-128-256-A-512-512-512-A-512-512, then Linear(512*4*4, 4096)-neuron-
Linear(4096, 4096)-neuron-Linear(4096, classes).  VGG5: 64-A-128-128-A, then the same
classifier on 128*8*8 inputs.  ``width`` scales every conv width and
``classifier_width`` sets the hidden size of the classifier (CPU presets shrink both).
"""
from __future__ import annotations

import torch
from torch import nn

from ..neurons import LIF
from ..neurons.fused import fused_lif
from .base import SpikingNetwork, Synapse, _Trace, fold
from .fast import channels_last_5d, conv2d, from_channels_last_5d

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
        kernels: str = "eager",
        **neuron_kwargs,
    ) -> None:
        kw = {"mean": mean, "std": std}
        super().__init__(timesteps, in_channels, kernels=kernels, **{k: v for k, v in kw.items() if v is not None})
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if classifier_width < 1:
            raise ValueError(f"classifier_width must be >= 1, got {classifier_width}")
        self.layers = nn.ModuleList()
        self._synapses: list[tuple[int, list[int]]] = []  # (neuron index, op indices)
        self.image_size = image_size  # the classifier's input size fixes the image size
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

    def run_fast(self, x: torch.Tensor, trace: _Trace) -> torch.Tensor:
        """Fast path (see :class:`SpikingNetwork`); ``x``: normalised images ``[B, C, H, W]``.

        ``h`` holds ``[tx * B, ...]`` with ``tx = 1`` while the input is still identical at
        every step (before the first neuron) and ``tx = T`` after it.
        """
        T, B = self.timesteps, x.shape[0]
        layers = list(self.layers)
        last = max(i for i, m in enumerate(layers) if isinstance(m, LIF))
        h, tx, i = x.contiguous(memory_format=torch.channels_last), 1, 0
        while i < len(layers):
            layer, nxt = layers[i], layers[i + 1:i + 4]
            if (isinstance(layer, nn.Conv2d) and len(nxt) >= 2 and isinstance(nxt[0], nn.BatchNorm2d)
                    and isinstance(nxt[1], LIF) and i + 2 != last):
                y = conv2d(h, layer)
                pool = (not trace.record and len(nxt) == 3 and _is_pool2(nxt[2])
                        and y.shape[2] % 2 == 0 and y.shape[3] % 2 == 0)
                s = fused_lif(channels_last_5d(y, tx), nxt[1], T, nxt[0], pool, self.kernels)
                if trace.record:
                    trace.spikes.append(s.permute(0, 1, 4, 2, 3))
                h, tx, i = from_channels_last_5d(s), T, i + (4 if pool else 3)
            elif isinstance(layer, LIF):
                current = h.unflatten(0, (tx, B))
                if i == last:
                    trace.last_current = current.expand(T, *current.shape[1:])
                s = fused_lif(current, layer, T, None, False, self.kernels)
                if trace.record:
                    trace.spikes.append(s)
                h, tx, i = s.flatten(0, 1), T, i + 1
            else:
                if isinstance(layer, nn.Flatten):
                    h = h.contiguous()  # NCHW order, as the classifier's weights expect
                h = conv2d(h, layer) if isinstance(layer, nn.Conv2d) else layer(h)
                i += 1
        logits = self.head(h).unflatten(0, (tx, B))
        return logits.expand(T, *logits.shape[1:])

    def synapses(self) -> list[Synapse]:
        return [
            Synapse(f"layers.{n}", self.layers[n], [self.layers[i] for i in ops]) for n, ops in self._synapses
        ]


def _is_pool2(m: nn.Module) -> bool:
    """An AvgPool2d(2) (2x2 windows, stride 2, no padding) that the fused kernels can absorb."""
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (isinstance(m, nn.AvgPool2d) and pair(m.kernel_size) == (2, 2) and pair(m.stride or m.kernel_size) == (2, 2)
            and pair(m.padding) == (0, 0) and not m.ceil_mode and m.divisor_override is None)


def vgg5(**kwargs) -> SpikingVGG:
    return SpikingVGG(VGG_LAYOUTS["vgg5"], **kwargs)


def vgg11(**kwargs) -> SpikingVGG:
    return SpikingVGG(VGG_LAYOUTS["vgg11"], **kwargs)
