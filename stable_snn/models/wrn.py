"""Spiking WideResNet-16-4 with pre-activation blocks and convex-combination residuals.

Block (:class:`PreActBlock`): o = N(BN(x)); y = conv2(N(BN(conv1(o)))); out = w0 * shortcut + w1 * y,
with (w0, w1) a learned convex combination initialised to (0.5, 0.5) and kept on the
simplex by the SNN-RAT regulariser (``stable_snn.regularizers``).  The shortcut is ``x``
or, when the shape changes, a 1x1 conv of ``o``.  The stem is a 3x3 conv; after the three
groups: BN-neuron (the last spiking layer), global average pooling, Linear.  Weights come from
``init`` (:mod:`.init`) drawn from ``generator``; the convolutions have no bias in either scheme.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..neurons import LIF
from .base import Feed, SpikingNetwork, Synapse
from .blocks import Block, BNSpiking, ConvBNSpiking, Trace, conv_seq, fold
from .fast import FastConv2d
from .init import init_weights


class ConvexCombination(nn.Module):
    """``w0 * a + w1 * b`` with ``w`` a point of the 2-simplex (initialised 0.5/0.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((2,), 0.5))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.weight[0] * a + self.weight[1] * b


class PreActBlock(Block):
    """Pre-activation residual block: ``[Tx, B, cin, H, W] -> [T, B, cout, H/stride, W/stride]``.

    ``pre`` = BN-neuron on the input, ``mid`` = conv1-BN-neuron, then conv2; the shortcut
    is the input or a 1x1 conv of ``pre``'s spikes.
    """

    def __init__(self, cin: int, cout: int, stride: int, make_neuron: Callable[[], LIF]) -> None:
        super().__init__()
        self.pre = BNSpiking(cin, make_neuron())
        self.mid = ConvBNSpiking(cin, cout, make_neuron(), stride=stride)
        self.conv2 = FastConv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = FastConv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None
        self.combine = ConvexCombination()

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        o = self.pre(x, trace)
        y = conv_seq(self.conv2, self.mid(o, trace))
        short = x if self.shortcut is None else conv_seq(self.shortcut, o)
        return self.combine(short, y)  # a static x broadcasts over T


class SpikingWRN(SpikingNetwork):
    """``stem`` (conv) -> ``blocks`` (pre-activation) -> ``final`` (BN-neuron) -> ``pool`` -> ``head``."""

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
        backend: str = "eager",
        init: str = "authors",
        generator: torch.Generator | None = None,
        **neuron_kwargs,
    ) -> None:
        kw = {"mean": mean, "std": std}
        super().__init__(timesteps, in_channels, backend=backend, **{k: v for k, v in kw.items() if v is not None})
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        n = (depth - 4) // 6
        widths = [max(1, int(round(c * width))) for c in (16, 16 * widen, 32 * widen, 64 * widen)]
        self.stem = FastConv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        cin = widths[0]
        for group, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(PreActBlock(cin, group, stride if i == 0 else 1, lambda: self._neuron(neuron, neuron_kwargs)))
                cin = group
        self.blocks = nn.ModuleList(blocks)
        self.final = BNSpiking(cin, self._neuron(neuron, neuron_kwargs), records_current=True)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)
        self.num_classes = num_classes
        self.backend = backend
        init_weights(self, init, generator)

    def synapses(self) -> list[Synapse]:
        """Every spiking layer's synapse, with the residual stream followed back to the spikes that feed it.

        The stream entering a block is a weighted sum of paths: the stem on the image, and for each
        earlier block ``w1 * conv2(mid spikes)`` plus ``w0`` times its shortcut (the stream itself, or
        a 1x1 conv of the block's ``pre`` spikes).  A block's ``pre`` layer and the ``final`` layer see
        BatchNorm of that sum; a ``mid`` layer sees conv1 of its block's ``pre`` spikes, then BatchNorm.
        """
        names = {id(m): n for n, m in self.named_modules()}
        stream = [Feed(None, (self.stem,))]
        out = []
        for block in self.blocks:
            pre, mid = names[id(block.pre)], names[id(block.mid)]
            out.append(Synapse(pre, block.pre.neuron, tuple(stream), block.pre.post_ops()))
            out.append(Synapse(mid, block.mid.neuron, (Feed(pre, block.mid.weight_ops()),), block.mid.post_ops()))
            w0, w1 = (float(w) for w in block.combine.weight.detach())
            short = ([Feed(f.source, f.ops, w0 * f.coef) for f in stream] if block.shortcut is None
                     else [Feed(pre, (block.shortcut,), w0)])
            stream = [*short, Feed(mid, (block.conv2,), w1)]
        out.append(Synapse(names[id(self.final)], self.final.neuron, tuple(stream), self.final.post_ops()))
        return out

    def forward_trunk(self, x: torch.Tensor, trace: Trace) -> torch.Tensor:
        """``[Tx, B, C, H, W]`` -> stem -> blocks -> BN-neuron -> global pooling: pre-logits ``[T, B, C']``."""
        h = conv_seq(self.stem, x)
        for block in self.blocks:
            h = block(h, trace)
        return fold(self.pool, self.final(h, trace))


def wrn16(**kwargs) -> SpikingWRN:
    kwargs.setdefault("depth", 16)
    kwargs.setdefault("widen", 4)
    kwargs.pop("classifier_width", None)
    return SpikingWRN(**kwargs)
