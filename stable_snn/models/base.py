"""Common machinery of the spiking networks: direct encoding, one traversal, internals.

Shapes: images ``[B, C, H, W]`` in [0, 1]; everything inside is time-major
``[T, B, *]``; logits ``[T, B, num_classes]`` (decode with ``logits.mean(0)``).

In the timm manner, ``forward(x) = forward_head(forward_features(x))``:
:meth:`SpikingNetwork.forward_features` returns :class:`Features` (pre-logits, the input
current of the last spiking layer, recorded spikes) and :meth:`SpikingNetwork.forward_head`
the logits.  The blocks (:mod:`.blocks`) are called as modules on every backend
(:mod:`.backend`), so forward hooks and pre-hooks on them always fire and never change the
computation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..neurons import LIF, build_neuron
from .backend import HasBackend, check_backend
from .blocks import SpikingBlock, Trace

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class Features(NamedTuple):
    """What :meth:`SpikingNetwork.forward_features` returns.

    pre_logits:   ``[T, B, F]`` input of the classifier head
    last_current: ``[T, B, *]`` input current ``I^L`` of the last spiking layer (for MS-MPPD, Eq. 14)
    spikes:       spikes ``[T, B, *]`` of every spiking layer in forward order (TASAD/STD,
                  Eqs. 12-13; un-pooled); empty unless ``record_spikes=True``
    """

    pre_logits: torch.Tensor
    last_current: torch.Tensor
    spikes: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Feed:
    """One path into a spiking layer's input current: ``coef * ops(x)``, ``x`` the spikes of the layer
    named ``source`` (None: the encoded image), ``ops`` applied in order (pooling, conv, Linear, ...)."""

    source: str | None
    ops: tuple[nn.Module, ...]
    coef: float = 1.0


@dataclass(frozen=True)
class Synapse:
    """The map feeding one spiking layer: ``I = post(sum of its feeds)`` (``post``: a BatchNorm or nothing).

    It is affine in the spikes of the layers it names; its linear part maps a spike perturbation
    to the input-current perturbation ``dI`` of Eq. 11 (Theorem 3.1's ``W ds``).
    """

    name: str
    neuron: LIF
    feeds: tuple[Feed, ...]
    post: tuple[nn.Module, ...] = ()


class SpikingNetwork(HasBackend, nn.Module):
    """Base of every model: normalisation inside, direct encoding over T steps, blocks.

    ``backend`` (``"reference"``, ``"eager"`` or ``"compiled"``, see :mod:`.backend`) is
    chosen once per model and propagates to its blocks; subclasses build their blocks and
    then assign ``self.backend = backend``.  Subclasses implement :meth:`forward_trunk`.
    """

    image_size: int | None = None  # the one input size an architecture accepts, if it fixes one

    def __init__(self, timesteps: int, in_channels: int = 3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                 backend: str = "eager") -> None:
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self._backend = check_backend(backend)  # blocks get it when the subclass assigns self.backend
        self.timesteps = timesteps
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _neuron(self, neuron: str, neuron_kwargs: dict) -> LIF:
        return build_neuron(neuron, self.timesteps, **neuron_kwargs)

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
        """Direct encoding of ``[B, C, H, W]`` images: ``[1, B, C, H, W]`` (static, broadcast over T)
        on the fused backends, ``[T, B, C, H, W]`` (the image repeated) on ``"reference"``."""
        x = self.normalize(x).unsqueeze(0)
        return x.expand(self.timesteps, *x.shape[1:]) if self.backend == "reference" else x

    def forward_trunk(self, x: torch.Tensor, trace: Trace) -> torch.Tensor:  # pragma: no cover - abstract
        """The blocks from the encoded input ``[Tx, B, C, H, W]`` to the pre-logits ``[Tx, B, F]``."""
        raise NotImplementedError

    # -- public API ------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, *, record_spikes: bool = False, bn_groups: int = 1) -> Features:
        """``x``: ``[B, C, H, W]`` in [0, 1] -> :class:`Features` (spikes recorded when asked).

        ``bn_groups``: ``x`` is that many equal batches in order (e.g. clean and perturbed), which
        training-mode BatchNorm normalises with statistics of their own, as separate passes would.
        """
        if not isinstance(bn_groups, int) or bn_groups < 1 or x.shape[0] % bn_groups:
            raise ValueError(f"bn_groups={bn_groups!r} must be an int >= 1 dividing the batch of {tuple(x.shape)}")
        trace = Trace(record_spikes=record_spikes, bn_groups=bn_groups)
        pre = self.forward_trunk(self.encode(x), trace)
        if trace.last_current is None:
            raise RuntimeError(f"{type(self).__name__} has no spiking block with records_current=True")
        return Features(pre.expand(self.timesteps, *pre.shape[1:]), trace.last_current, tuple(trace.spikes))

    def forward_head(self, features: Features) -> torch.Tensor:
        """Logits ``[T, B, num_classes]`` from :class:`Features` (the classifier head per time step)."""
        return self.head(features.pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C, H, W]`` in [0, 1] -> logits ``[T, B, num_classes]``."""
        return self.forward_head(self.forward_features(x))

    def spiking_blocks(self) -> list[tuple[str, SpikingBlock]]:
        """Every spiking layer's block in forward order, with its name."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, SpikingBlock)]

    def spiking_layers(self) -> list[LIF]:
        """The neurons of the spiking layers in forward order."""
        return [m for m in self.modules() if isinstance(m, LIF)]

    def synapses(self) -> list[Synapse]:
        """The synapse and neuron of every spiking layer, named after its block.

        A plain chain: each layer is fed by the spikes of the layer before it (through that layer's
        pooling, then its own weight op), the first by the encoded image.  Networks with other
        wiring (WRN's residual sums) override this.
        """
        out, source, carry = [], None, ()
        for name, block in self.spiking_blocks():
            out.append(Synapse(name, block.neuron, (Feed(source, (*carry, *block.weight_ops())),), block.post_ops()))
            source, carry = name, block.output_ops()
        return out

    def dlif_gains(self) -> torch.Tensor | None:
        """``[L, T]`` gains ``a^l[t]`` of all DLIF layers (None when the model has none)."""
        gains = [m.gains() for m in self.spiking_layers() if m.gains() is not None]
        return torch.stack([g.detach().float().cpu() for g in gains]) if gains else None
