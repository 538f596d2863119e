"""Common machinery of the spiking networks: direct encoding, time folding, internals.

Shapes: images ``[B, C, H, W]`` in [0, 1]; everything inside is time-major
``[T, B, *]``; logits ``[T, B, num_classes]`` (decode with ``logits.mean(0)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from ..neurons import LIF, build_neuron
from ..neurons.fused import KERNELS

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class SNNOutput(NamedTuple):
    """What a forward pass gives back with ``return_internals=True``.

    logits:       ``[T, B, num_classes]``
    last_current: ``[T, B, *]`` input current ``I^L`` of the last spiking layer (for MS-MPPD)
    spikes:       spikes ``[T, B, *]`` of every spiking layer, in forward order (TASAD/STD)
    """

    logits: torch.Tensor
    last_current: torch.Tensor
    spikes: tuple[torch.Tensor, ...]


@dataclass
class _Trace:
    record: bool
    spikes: list[torch.Tensor] = field(default_factory=list)
    last_current: torch.Tensor | None = None


def fold(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a stateless module to ``[T, B, *]`` by folding T into the batch."""
    T, B = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.unflatten(0, (T, B))


@dataclass
class Synapse:
    """The linear map feeding one spiking layer: weight ops applied in order (Conv/Linear/BN)."""

    name: str
    neuron: LIF
    ops: list[nn.Module]


class SpikingNetwork(nn.Module):
    """Base of every model: normalisation inside, direct encoding over T steps.

    Two ways through the same modules compute the same function:

    * the *module path* (:meth:`run`): every layer called as a module on ``[T, B, *]``
      folded into the batch; taken when any neuron is on the ``"reference"`` backend or any
      submodule has hooks (so hooks and backends behave as documented);
    * the *fast path* (:meth:`run_fast`, the default): layers before the first neuron run
      once on the ``[B, ...]`` image instead of T times on identical copies (exact; the
      BatchNorm running variance counts the T copies); convolutions in channels-last
      (:mod:`.fast`); each BatchNorm-neuron(-2x2 average pooling) triple as one fused
      autograd Function (:mod:`stable_snn.neurons.fused`) whose kernels are
      ``kernels="eager"`` (plain PyTorch) or ``"compiled"`` (``torch.compile``).
    """

    image_size: int | None = None  # the one input size an architecture accepts, if it fixes one

    def __init__(self, timesteps: int, in_channels: int = 3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                 kernels: str = "eager") -> None:
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self.timesteps = timesteps
        self.in_channels = in_channels
        self.kernels = kernels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @property
    def kernels(self) -> str:
        """Kernels of the fast path's fused neurons: ``"eager"`` or ``"compiled"`` (``torch.compile``)."""
        return self._kernels

    @kernels.setter
    def kernels(self, value: str) -> None:
        if value not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {value!r}")
        self._kernels = value

    # -- pieces subclasses use -------------------------------------------------
    def _neuron(self, neuron: str, neuron_kwargs: dict) -> LIF:
        return build_neuron(neuron, self.timesteps, **neuron_kwargs)

    @staticmethod
    def _fire(neuron: LIF, current: torch.Tensor, trace: _Trace) -> torch.Tensor:
        s = neuron(current)
        trace.last_current = current
        if trace.record:
            trace.spikes.append(s)
        return s

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``[B, C, H, W]`` images in [0, 1] with the dataset's mean and std."""
        size = self.image_size
        if x.dim() != 4 or x.shape[1] != self.in_channels or (size is not None and tuple(x.shape[2:]) != (size, size)):
            hw = f"{size}, {size}" if size is not None else "H, W"
            raise ValueError(
                f"{type(self).__name__} expects images of shape [B, {self.in_channels}, {hw}], got {tuple(x.shape)}"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``[B, C, H, W]`` images and repeat them T times: ``[T, B, C, H, W]``."""
        x = self.normalize(x)
        return x.unsqueeze(0).expand(self.timesteps, *x.shape)

    def run(self, seq: torch.Tensor, trace: _Trace) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_fast(self, x: torch.Tensor, trace: _Trace) -> torch.Tensor:
        """The fast path from normalised images ``[B, C, H, W]`` (default: the module path)."""
        return self.run(x.unsqueeze(0).expand(self.timesteps, *x.shape), trace)

    def uses_fast_path(self) -> bool:
        """Whether :meth:`forward` takes the fast path: every neuron on the "fused" backend, no submodule hooks."""
        for m in self.modules():
            if m is not self and (m._forward_hooks or m._forward_pre_hooks):
                return False
        return all(m.backend == "fused" for m in self.spiking_layers())

    def synapses(self) -> list[Synapse]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public API ------------------------------------------------------------
    def forward(self, x: torch.Tensor, return_internals: bool = False, *, record_spikes: bool = True):
        """``x``: ``[B, C, H, W]`` in [0, 1] -> logits ``[T, B, classes]`` (or :class:`SNNOutput`).

        ``record_spikes=False`` leaves ``SNNOutput.spikes`` empty (the MS-MPPD objective needs
        only ``last_current``), which lets the fast path fuse pooling into the neurons.
        """
        trace = _Trace(record=return_internals and record_spikes)
        if self.uses_fast_path():
            logits = self.run_fast(self.normalize(x), trace)
        else:
            logits = self.run(self.encode(x), trace)
        if not return_internals:
            return logits
        return SNNOutput(logits, trace.last_current, tuple(trace.spikes))

    def spiking_layers(self) -> list[LIF]:
        return [m for m in self.modules() if isinstance(m, LIF)]

    def dlif_gains(self) -> torch.Tensor | None:
        """``[L, T]`` gains ``a^l[t]`` of all DLIF layers (None when the model has none)."""
        gains = [m.gains() for m in self.spiking_layers() if m.gains() is not None]
        return torch.stack([g.detach().float().cpu() for g in gains]) if gains else None
