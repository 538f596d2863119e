"""Spiking WideResNet-16-4 with pre-activation blocks and convex-combination residuals.

Block: o = N(BN(x)); y = conv2(N(BN(conv1(o)))); out = w0 * shortcut + w1 * y,
with (w0, w1) a learned convex combination initialised to (0.5, 0.5) and kept on
the simplex by the SNN-RAT regulariser (``stable_snn.regularizers``).  The
shortcut is ``x`` or, when the shape changes, a 1x1 conv of ``o``.  After the
three groups: BN-neuron (the last spiking layer), global average pooling, Linear.
"""
from __future__ import annotations

import torch
from torch import nn

from ..neurons.fused import fused_lif
from .base import SpikingNetwork, Synapse, _Trace, fold
from .fast import channels_last_5d, conv2d, from_channels_last_5d


class ConvexCombination(nn.Module):
    """``w0 * a + w1 * b`` with ``w`` a point of the 2-simplex (initialised 0.5/0.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((2,), 0.5))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.weight[0] * a + self.weight[1] * b


class PreActBlock(nn.Module):
    def __init__(self, net: SpikingNetwork, cin: int, cout: int, stride: int, neuron: str, neuron_kwargs: dict):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = net._neuron(neuron, neuron_kwargs)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = net._neuron(neuron, neuron_kwargs)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None
        self.combine = ConvexCombination()

    def forward(self, x: torch.Tensor, trace: _Trace) -> torch.Tensor:
        o = SpikingNetwork._fire(self.act1, fold(self.bn1, x), trace)
        y = fold(self.conv1, o)
        y = SpikingNetwork._fire(self.act2, fold(self.bn2, y), trace)
        y = fold(self.conv2, y)
        short = x if self.shortcut is None else fold(self.shortcut, o)
        return self.combine(short, y)

    def forward_fast(self, x: torch.Tensor, tx: int, timesteps: int, trace: _Trace, kernels: str) -> torch.Tensor:
        """The block on the fast path: ``x`` channels-last ``[tx*B, C, H, W]`` -> ``[T*B, C', H', W']``."""
        o = fused_lif(channels_last_5d(x, tx), self.act1, timesteps, self.bn1, False, kernels)
        o4 = from_channels_last_5d(o)
        y = fused_lif(channels_last_5d(conv2d(o4, self.conv1), timesteps), self.act2, timesteps, self.bn2, False, kernels)
        if trace.record:
            trace.spikes.extend([o.permute(0, 1, 4, 2, 3), y.permute(0, 1, 4, 2, 3)])
        y = conv2d(from_channels_last_5d(y), self.conv2)
        short = x if self.shortcut is None else conv2d(o4, self.shortcut)
        B = y.shape[0] // timesteps
        out = self.combine(short.unflatten(0, (short.shape[0] // B, B)), y.unflatten(0, (timesteps, B)))
        return out.flatten(0, 1)


class SpikingWRN(SpikingNetwork):
    def __init__(
        self,
        depth: int = 16,
        widen: int = 4,
        num_classes: int = 10,
        timesteps: int = 8,
        neuron: str = "dlif",
        width: float = 1.0,
        in_channels: int = 3,
        mean=None,
        std=None,
        kernels: str = "eager",
        **neuron_kwargs,
    ) -> None:
        kw = {"mean": mean, "std": std}
        super().__init__(timesteps, in_channels, kernels=kernels, **{k: v for k, v in kw.items() if v is not None})
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        n = (depth - 4) // 6
        widths = [max(1, int(round(c * width))) for c in (16, 16 * widen, 32 * widen, 64 * widen)]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        cin = widths[0]
        for group, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(PreActBlock(self, cin, group, stride if i == 0 else 1, neuron, neuron_kwargs))
                cin = group
        self.blocks = nn.ModuleList(blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.act = self._neuron(neuron, neuron_kwargs)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)
        self.num_classes = num_classes

    def run(self, seq: torch.Tensor, trace: _Trace) -> torch.Tensor:
        x = fold(self.stem, seq)
        for block in self.blocks:
            x = block(x, trace)
        x = self._fire(self.act, fold(self.bn, x), trace)
        return fold(nn.Sequential(self.pool, self.head), x)

    def run_fast(self, x: torch.Tensor, trace: _Trace) -> torch.Tensor:
        """Fast path (see :class:`SpikingNetwork`): the stem runs once on the images ``[B, C, H, W]``."""
        T, B = self.timesteps, x.shape[0]
        h = conv2d(x.contiguous(memory_format=torch.channels_last), self.stem)
        for block in self.blocks:
            h = block.forward_fast(h, h.shape[0] // B, T, trace, self.kernels)
        current = fold(self.bn, h.unflatten(0, (h.shape[0] // B, B)).expand(T, B, *h.shape[1:]))
        trace.last_current = current
        s = fused_lif(current, self.act, T, None, False, self.kernels)
        if trace.record:
            trace.spikes.append(s)
        return fold(nn.Sequential(self.pool, self.head), s)

    def synapses(self) -> list[Synapse]:
        out = []
        for i, b in enumerate(self.blocks):
            out.append(Synapse(f"blocks.{i}.act1", b.act1, [b.bn1]))
            out.append(Synapse(f"blocks.{i}.act2", b.act2, [b.conv1, b.bn2]))
        out.append(Synapse("act", self.act, [self.bn]))
        return out


def wrn16(**kwargs) -> SpikingWRN:
    kwargs.setdefault("depth", 16)
    kwargs.setdefault("widen", 4)
    kwargs.pop("classifier_width", None)
    return SpikingWRN(**kwargs)
