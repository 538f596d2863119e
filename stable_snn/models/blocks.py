"""Blocks of the spiking networks: each spiking layer is one module call on every backend.

Tensors between blocks are time-major ``[Tx, B, *]`` with ``Tx`` in {T, 1}: ``Tx = 1``
is a *static* input, identical at every time step (the directly encoded image and the
layers before the first neuron on the fused backends), broadcast over T.  A block's
``forward(x, trace)`` takes the per-call :class:`Trace` it records into.

* :class:`SpikingBlock`: one spiking layer, ``synapse -> BatchNorm? -> neuron -> pooling?``;
  :class:`ConvBNSpiking` (conv3x3-BN-neuron(-AvgPool2d(2)), VGG and WRN),
  :class:`LinearSpiking` (Linear-neuron, VGG's classifier) and :class:`BNSpiking`
  (BN-neuron, WRN's pre-activations and last layer).
* :func:`fold` / :func:`conv_seq`: stateless layers on ``[Tx, B, *]`` with T folded into the batch.

Backends (:mod:`.backend`) change how :meth:`SpikingBlock.fire` computes, never what: the
``"reference"`` backend calls the BatchNorm, the neuron (per-step math, any surrogate) and the
pooling as modules; the fused backends run BatchNorm-neuron(-2x2 pooling) as one autograd
Function (:func:`~stable_snn.neurons.fused.fused_lif`).  Pooling is fused whether or not the
spikes are recorded: the fused kernel then also returns the un-pooled spikes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..neurons import LIF
from ..neurons.fused import fused_lif
from .backend import HasBackend
from .fast import FastConv2d, channels_last_5d, from_channels_last_5d


@dataclass
class Trace:
    """What one forward pass records; created per call and passed to every block.

    record_spikes: whether blocks append their spikes ``[T, B, *]`` (un-pooled) to ``spikes``.
    last_current:  input current ``[T, B, *]`` of the block built with ``records_current=True``.
    bn_groups:     the batch is this many equal parts (in order), each normalised by training-mode
                   BatchNorm with statistics of its own, as separate passes would be.
    """

    record_spikes: bool = False
    bn_groups: int = 1
    spikes: list[torch.Tensor] = field(default_factory=list)
    last_current: torch.Tensor | None = None


def fold(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a stateless module to ``[Tx, B, *]`` by folding Tx into the batch."""
    Tx, B = x.shape[:2]
    return module(x.flatten(0, 1)).unflatten(0, (Tx, B))


def fold_groups(module: nn.Module, x: torch.Tensor, groups: int) -> torch.Tensor:
    """:func:`fold` on each of ``groups`` equal parts of the batch (dim 1) in turn (per-part BatchNorm statistics)."""
    if groups == 1:
        return fold(module, x)
    return torch.cat([fold(module, part) for part in x.chunk(groups, dim=1)], dim=1)


def conv_seq(conv: FastConv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` on ``[Tx, B, C, H, W]`` (folded), in channels-last memory on the fused backends."""
    h = x.flatten(0, 1)
    if conv.backend != "reference":
        h = h.contiguous(memory_format=torch.channels_last)
    return conv(h).unflatten(0, x.shape[:2])


def _is_pool2(m: nn.Module) -> bool:
    """An AvgPool2d(2) (2x2 windows, stride 2, no padding) that the fused kernels can absorb."""
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (isinstance(m, nn.AvgPool2d) and pair(m.kernel_size) == (2, 2) and pair(m.stride or m.kernel_size) == (2, 2)
            and pair(m.padding) == (0, 0) and not m.ceil_mode and m.divisor_override is None)


class Block(HasBackend, nn.Module):
    """A piece of a network called as a module: ``forward(x [Tx, B, *], trace) -> [T or Tx, B, *]``."""


class SpikingBlock(Block):
    """One spiking layer: synapse -> BatchNorm (optional) -> neuron -> pooling (optional).

    Subclasses set ``bn`` (a BatchNorm or None), ``neuron`` (LIF/DLIF), ``pool`` (a pooling
    module or None) and ``records_current``: the network's last spiking layer materialises
    its input current ``I^L`` (BatchNorm not fused) and stores it in the trace (MS-MPPD, Eq. 14).
    """

    bn: nn.Module | None
    neuron: LIF
    pool: nn.Module | None
    records_current: bool

    def weight_ops(self) -> tuple[nn.Module, ...]:  # pragma: no cover - abstract
        """The weight ops from the block's input to the neuron's current before BatchNorm, in order
        (for the MPPD gains, Theorem 3.1)."""
        raise NotImplementedError

    def post_ops(self) -> tuple[nn.Module, ...]:
        """What acts on the summed synaptic input before the neuron: the BatchNorm, if any."""
        return (self.bn,) if self.bn is not None else ()

    def output_ops(self) -> tuple[nn.Module, ...]:
        """What acts on the spikes before the next layer sees them: the pooling, if any."""
        return (self.pool,) if self.pool is not None else ()

    def fire(self, y: torch.Tensor, trace: Trace | None) -> torch.Tensor:
        """BatchNorm -> neuron -> pooling on the synapse output ``y`` ``[Tx, B, *]``: spikes ``[T, B, *]``."""
        trace = trace if trace is not None else Trace()
        T = self.neuron.timesteps
        if self.backend != "reference":
            return self._fire_fused(y, trace, T)
        y = y.expand(T, *y.shape[1:])
        current = fold_groups(self.bn, y, trace.bn_groups) if self.bn is not None else y
        s = self.neuron(current)
        self._record(trace, current, s)
        return fold(self.pool, s) if self.pool is not None else s

    def _fire_fused(self, y: torch.Tensor, trace: Trace, T: int) -> torch.Tensor:
        bn = self.bn
        if self.records_current:  # the current must exist as a tensor: BatchNorm as a module
            y = y.expand(T, *y.shape[1:]) if bn is not None else y
            y = fold_groups(bn, y, trace.bn_groups) if bn is not None else y
            bn = None
        image = y.dim() == 5
        x = channels_last_5d(y) if image else y
        pool = (self.pool is not None and image and _is_pool2(self.pool)
                and y.shape[-2] % 2 == 0 and y.shape[-1] % 2 == 0)
        keep_full = pool and trace.record_spikes
        out = fused_lif(x, self.neuron, T, bn, pool, self.backend, keep_full=keep_full, groups=trace.bn_groups)
        s, full = out if keep_full else (out, out)
        if image:
            s, full = from_channels_last_5d(s), from_channels_last_5d(full)
        self._record(trace, y.expand(T, *y.shape[1:]) if self.records_current else None, full)
        return fold(self.pool, s) if (self.pool is not None and not pool) else s

    def _record(self, trace: Trace, current: torch.Tensor | None, spikes: torch.Tensor) -> None:
        if self.records_current:
            trace.last_current = current
        if trace.record_spikes:
            trace.spikes.append(spikes)


class ConvBNSpiking(SpikingBlock):
    """conv3x3 -> BatchNorm -> neuron (-> AvgPool2d(2)): ``[Tx, B, C, H, W] -> [T, B, C', H', W']``."""

    def __init__(self, cin: int, cout: int, neuron: LIF, stride: int = 1, pool: bool = False,
                 records_current: bool = False, bias: bool = False) -> None:
        super().__init__()
        self.conv = FastConv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.neuron = neuron
        self.pool = nn.AvgPool2d(2) if pool else None
        self.records_current = records_current

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        return self.fire(conv_seq(self.conv, x), trace)

    def weight_ops(self) -> tuple[nn.Module, ...]:
        return (self.conv,)


class LinearSpiking(SpikingBlock):
    """Linear -> neuron: ``[Tx, B, *]`` (flattened in NCHW order) ``-> [T, B, out_features]``."""

    def __init__(self, fin: int, fout: int, neuron: LIF, records_current: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(fin, fout)
        self.bn = None
        self.neuron = neuron
        self.pool = None
        self.records_current = records_current

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        return self.fire(self.linear(x.flatten(2)), trace)

    def weight_ops(self) -> tuple[nn.Module, ...]:
        return (nn.Flatten(), self.linear)  # the block flattens [T, B, C, H, W] in NCHW order


class BNSpiking(SpikingBlock):
    """BatchNorm -> neuron: ``[Tx, B, C, H, W] -> [T, B, C, H, W]``."""

    def __init__(self, channels: int, neuron: LIF, records_current: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.neuron = neuron
        self.pool = None
        self.records_current = records_current

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        return self.fire(x, trace)

    def weight_ops(self) -> tuple[nn.Module, ...]:
        return ()
