"""The backend of a model: how its blocks compute the same function, chosen once per model.

* ``"reference"``: plain per-step module math: every layer called as a module on
  ``[T*B, ...]`` (the image repeated T times), the per-step neuron of
  :func:`~stable_snn.neurons.lif_multistep_reference` (any surrogate), pooling as a module;
* ``"eager"``: convolutions in channels-last with the fast weight gradient, the layers
  before the first neuron run once on the image (``[1, B, ...]`` broadcast over T), each
  BatchNorm-neuron(-2x2 average pooling) as one fused autograd Function
  (:mod:`stable_snn.neurons.fused`) with plain PyTorch kernels (triangle surrogate only);
* ``"compiled"``: the same with ``torch.compile``'d kernels.

Setting ``backend`` on a module sets it on every module of its subtree that has one (the
model, its blocks, its convolutions).  A bad value raises; nothing falls back to another
backend.
"""
from __future__ import annotations

BACKENDS = ("reference", "eager", "compiled")


def check_backend(value) -> str:
    if value not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
    return value


class HasBackend:
    """Mixin of ``nn.Module`` subclasses with a validated ``backend`` that propagates to the subtree."""

    _backend = "eager"

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        check_backend(value)
        for m in self.modules():
            if isinstance(m, HasBackend):
                m._backend = value
